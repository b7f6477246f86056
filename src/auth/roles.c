/*
 * roles.c: role name -> permission bits.
 *
 * Defaults: admin = every permission; user = chat, completions, models,
 * tokenize; monitor = metrics. An empty text or "{}" means the defaults; any
 * other configured roles object replaces the
 * defaults as a whole (so an operator can also remove a default role); "*"
 * in a permission list means every permission.
 */
#include <cjson/cJSON.h>
#include <string.h>

#include "auth_internal.h"
#include "dsinfer/err.h"

static const char *const perm_names[] = {"chat", "completions", "models", "tokenize", "metrics", "admin"};
#define N_PERMS (sizeof perm_names / sizeof perm_names[0])

const char *dsi_perm_name(uint32_t perm) {
    for (size_t i = 0; i < N_PERMS; i++)
        if (perm == (1u << i)) return perm_names[i];
    return NULL;
}

int dsi_perm_parse(const char *name, uint32_t *out) {
    if (!name) return DSI_EINVAL;
    for (size_t i = 0; i < N_PERMS; i++)
        if (!strcmp(name, perm_names[i])) {
            *out = 1u << i;
            return 0;
        }
    return DSI_EINVAL;
}

void dsi__roles_default(struct dsi__roles *r) {
    memset(r, 0, sizeof *r);
    strcpy(r->r[0].name, "admin");
    r->r[0].perms = DSI_PERM_ALL;
    strcpy(r->r[1].name, "user");
    r->r[1].perms = DSI_PERM_CHAT | DSI_PERM_COMPLETIONS | DSI_PERM_MODELS | DSI_PERM_TOKENIZE;
    strcpy(r->r[2].name, "monitor");
    r->r[2].perms = DSI_PERM_METRICS;
    r->n = 3;
}

/* Role names and key ids end up in keys files, logs and audit lines: keep them plain. */
bool dsi__auth_name_ok(const char *s, size_t max_len) {
    size_t n = strlen(s);
    if (n == 0 || n > max_len) return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
              c == '-' || c == '.'))
            return false;
    }
    return true;
}

int dsi__roles_parse(const char *json, struct dsi__roles *out, char **err) {
    if (!json || !*json) {
        dsi__roles_default(out);
        return 0;
    }
    struct dsi__roles r;
    memset(&r, 0, sizeof r);
    cJSON *root = cJSON_Parse(json);
    int rc = 0;
    if (!root || !cJSON_IsObject(root)) {
        rc = dsi_seterr(err, DSI_EINVAL, "roles: not a JSON object like {\"user\":[\"chat\"]}");
        goto done;
    }
    for (cJSON *it = root->child; it; it = it->next) {
        const char *name = it->string;
        if (!name || !dsi__auth_name_ok(name, DSI__ROLE_NAME_MAX)) {
            rc = dsi_seterr(err, DSI_EINVAL, "roles: bad role name '%.40s' (1-31 of A-Z a-z 0-9 _ - .)",
                            name ? name : "");
            goto done;
        }
        if (dsi__roles_find(&r, name)) {
            rc = dsi_seterr(err, DSI_EINVAL, "roles: role '%s' defined twice", name);
            goto done;
        }
        if (r.n == DSI__ROLES_MAX) {
            rc = dsi_seterr(err, DSI_EINVAL, "roles: more than %d roles", DSI__ROLES_MAX);
            goto done;
        }
        if (!cJSON_IsArray(it)) {
            rc = dsi_seterr(err, DSI_EINVAL, "roles: role '%s' must be a list of permissions", name);
            goto done;
        }
        uint32_t perms = 0;
        for (cJSON *p = it->child; p; p = p->next) {
            uint32_t bit;
            if (!cJSON_IsString(p)) {
                rc = dsi_seterr(err, DSI_EINVAL, "roles: role '%s': permissions must be strings", name);
                goto done;
            }
            if (!strcmp(p->valuestring, "*")) {
                perms |= DSI_PERM_ALL;
            } else if (dsi_perm_parse(p->valuestring, &bit) == 0) {
                perms |= bit;
            } else {
                rc = dsi_seterr(err, DSI_EINVAL,
                                "roles: role '%s': unknown permission '%.40s' (chat, completions, "
                                "models, tokenize, metrics, admin, *)",
                                name, p->valuestring);
                goto done;
            }
        }
        strcpy(r.r[r.n].name, name);
        r.r[r.n].perms = perms;
        r.n++;
    }
    if (r.n == 0) dsi__roles_default(&r); /* "{}" means the defaults, as in config.c */
    *out = r;
done:
    cJSON_Delete(root);
    return rc;
}

const struct dsi__role *dsi__roles_find(const struct dsi__roles *r, const char *name) {
    for (size_t i = 0; i < r->n; i++)
        if (!strcmp(r->r[i].name, name)) return &r->r[i];
    return NULL;
}
