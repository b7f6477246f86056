/* placeholder so the module library is never empty */
typedef int dsi__tok_placeholder;
