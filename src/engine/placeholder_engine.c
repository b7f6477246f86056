/* placeholder so the module library is never empty */
typedef int dsi__engine_placeholder;
