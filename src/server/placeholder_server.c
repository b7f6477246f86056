/* placeholder so the module library is never empty */
typedef int dsi__server_placeholder;
