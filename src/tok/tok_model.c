/*
 * tok_model.c: the tokenizer of an open model, encrypted at rest or not.
 *
 * An encrypted model (model_key_file) keeps its decrypted tokenizer files in
 * memory (dsi_model_file); the files on disk are ciphertext. Any other model
 * is read from its directory as dsi_tok_load does.
 */
#include "dsinfer/err.h"
#include "dsinfer/model.h"
#include "dsinfer/tok.h"

int dsi_tok_load_model(const struct dsi_model *m, struct dsi_tokenizer **out, char **err) {
    if (!m || !out) return dsi_seterr(err, DSI_EINVAL, "tokenizer: no model");
    if (!m->encrypted) return dsi_tok_load(m->dir, out, err);
    const void *tj = NULL, *cj = NULL;
    size_t tl = 0, cl = 0;
    if (dsi_model_file(m, "tokenizer.json", &tj, &tl) != 0)
        return dsi_seterr(err, DSI_ENOENT, "%s: encrypted model has no tokenizer.json", m->dir);
    if (dsi_model_file(m, "tokenizer_config.json", &cj, &cl) != 0) cj = NULL, cl = 0;
    return dsi_tok_load_mem(tj, tl, cj, cl, out, err);
}
