/*
 * names.c: the names the served model answers to (config served_model_names,
 * else model_name, else the model directory's last component).
 *
 * Clients written for DeepSeek's cloud send "deepseek-chat" or
 * "deepseek-reasoner"; aliases let one served model answer to those. The first
 * name is the primary: listed first in /v1/models and named in responses. The
 * auth module gets every name joined by '\n' (names have no control characters,
 * config.c checks), so a key whose model allow-list holds any alias of the model
 * may use it under all of them.
 */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <string.h>

#include "dsinfer/err.h"
#include "srv.h"

int dsi__srv_set_names(struct dsi_server *s, const struct dsi_config *c, char **err) {
    s->n_model_names = 0;
    cJSON *j = c->served_model_names && c->served_model_names[0] ? cJSON_Parse(c->served_model_names) : NULL;
    const cJSON *a;
    cJSON_ArrayForEach(a, j) {
        if (!cJSON_IsString(a) || s->n_model_names >= DSI_MAX_MODEL_NAMES) continue;
        snprintf(s->model_names[s->n_model_names++], sizeof s->model_names[0], "%s", a->valuestring);
    }
    cJSON_Delete(j);
    if (c->served_model_names && c->served_model_names[0] && s->n_model_names == 0)
        return dsi_seterr(err, DSI_EINVAL, "config: served_model_names holds no name");
    if (s->n_model_names == 0) snprintf(s->model_names[s->n_model_names++], sizeof s->model_names[0], "%s",
                                        s->model_name);
    snprintf(s->model_name, sizeof s->model_name, "%s", s->model_names[0]);
    size_t off = 0;
    for (int i = 0; i < s->n_model_names; i++)
        off += (size_t)snprintf(s->model_names_nl + off, sizeof s->model_names_nl - off, "%s%s", i ? "\n" : "",
                                s->model_names[i]);
    return 0;
}

bool dsi__srv_model_known(const struct dsi_server *s, const char *name) {
    for (int i = 0; i < s->n_model_names; i++)
        if (!strcmp(s->model_names[i], name)) return true;
    return false;
}
