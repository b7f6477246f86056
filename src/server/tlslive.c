/*
 * tlslive.c: the listener's certificate, replaceable while serving (SIGHUP).
 *
 * libmicrohttpd keeps the certificate given by MHD_OPTION_HTTPS_MEM_CERT for its
 * whole life. Instead we hand GnuTLS a retrieve callback
 * (MHD_OPTION_HTTPS_CERT_CALLBACK) that returns the current credentials at each
 * handshake. The callback has no closure argument, so it finds the server
 * through the connection: MHD stores the connection as the GnuTLS session's ptr,
 * and our MHD_OPTION_NOTIFY_CONNECTION callback stores a struct dsi__conn (which
 * points to the server) as the connection's socket context before the handshake.
 *
 * Loading checks that the key belongs to the certificate (it signs a test message
 * that the certificate's public key must verify), so that a mismatched pair is
 * refused at start and a reload keeps the old pair instead of failing every
 * handshake afterwards.
 *
 * A reload swaps s->creds under s->tls_mu. Old credentials stay allocated until
 * the server is destroyed, because a handshake in progress may still use them;
 * a reload is rare and each generation is a few KB.
 */
#include <gnutls/abstract.h>
#include <gnutls/gnutls.h>
#include <stdlib.h>
#include <string.h>

#include "dsinfer/err.h"
#include "dsinfer/log.h"
#include "srv.h"

#define MAX_CHAIN 8

struct dsi__tls_creds {
    gnutls_pcert_st pcert[MAX_CHAIN];
    unsigned n_pcert;
    gnutls_privkey_t key;
    struct dsi__tls_creds *older; /* previous generations, freed at destroy */
};

/* Signature algorithm for a pair check with a key of algorithm pk. */
static gnutls_sign_algorithm_t check_sign_algo(gnutls_pk_algorithm_t pk) {
    switch (pk) {
    case GNUTLS_PK_EDDSA_ED25519: return GNUTLS_SIGN_EDDSA_ED25519;
    case GNUTLS_PK_EDDSA_ED448: return GNUTLS_SIGN_EDDSA_ED448;
    case GNUTLS_PK_RSA_PSS: return GNUTLS_SIGN_RSA_PSS_SHA256;
    default: return gnutls_pk_to_sign(pk, GNUTLS_DIG_SHA256);
    }
}

/* Whether key is the private half of the leaf certificate's public key: it signs
 * a fixed message and the certificate's key must verify the signature. Returns
 * 0, or DSI_ETLS with *err saying why. */
static int check_pair(const gnutls_pcert_st *leaf, gnutls_privkey_t key, char **err) {
    static const char msg[] = "dsinfer: does this key belong to this certificate?";
    gnutls_datum_t data = {(unsigned char *)msg, sizeof msg - 1}, sig = {NULL, 0};
    int bits = 0;
    gnutls_pk_algorithm_t kpk = (gnutls_pk_algorithm_t)gnutls_privkey_get_pk_algorithm(key, NULL);
    gnutls_pk_algorithm_t cpk = (gnutls_pk_algorithm_t)gnutls_pubkey_get_pk_algorithm(leaf->pubkey, (unsigned *)&bits);
    /* An RSA key may serve an RSA-PSS certificate; any other difference is a mismatch. */
    if (kpk != cpk && !(kpk == GNUTLS_PK_RSA && cpk == GNUTLS_PK_RSA_PSS))
        return dsi_seterr(err, DSI_ETLS, "the TLS key (%s) does not match the certificate (%s)", gnutls_pk_get_name(kpk),
                          gnutls_pk_get_name(cpk));
    gnutls_sign_algorithm_t sa = check_sign_algo(cpk);
    if (sa == GNUTLS_SIGN_UNKNOWN)
        return dsi_seterr(err, DSI_ETLS, "cannot check a %s key against its certificate", gnutls_pk_get_name(cpk));
    int r = gnutls_privkey_sign_data2(key, sa, 0, &data, &sig);
    if (r < 0) return dsi_seterr(err, DSI_ETLS, "the TLS key cannot sign: %s", gnutls_strerror(r));
    r = gnutls_pubkey_verify_data2(leaf->pubkey, sa, 0, &data, &sig);
    gnutls_free(sig.data);
    if (r < 0) return dsi_seterr(err, DSI_ETLS, "the TLS key does not belong to the certificate (test signature: %s)",
                                 gnutls_strerror(r));
    return 0;
}

int dsi__tls_creds_load(const char *cert_pem, const char *key_pem, struct dsi__tls_creds **out, char **err) {
    struct dsi__tls_creds *c = calloc(1, sizeof *c);
    if (!c) return dsi_seterr(err, DSI_ENOMEM, "out of memory");
    gnutls_datum_t cd = {(unsigned char *)cert_pem, (unsigned)strlen(cert_pem)};
    gnutls_datum_t kd = {(unsigned char *)key_pem, (unsigned)strlen(key_pem)};
    c->n_pcert = MAX_CHAIN;
    int r = gnutls_pcert_list_import_x509_raw(c->pcert, &c->n_pcert, &cd, GNUTLS_X509_FMT_PEM, 0);
    if (r < 0) {
        c->n_pcert = 0;
        dsi__tls_creds_free(c);
        return dsi_seterr(err, DSI_ETLS, "cannot read the TLS certificate: %s", gnutls_strerror(r));
    }
    if ((r = gnutls_privkey_init(&c->key)) < 0 ||
        (r = gnutls_privkey_import_x509_raw(c->key, &kd, GNUTLS_X509_FMT_PEM, NULL, 0)) < 0) {
        dsi__tls_creds_free(c);
        return dsi_seterr(err, DSI_ETLS, "cannot read the TLS key: %s", gnutls_strerror(r));
    }
    int rc = c->n_pcert ? check_pair(&c->pcert[0], c->key, err)
                        : dsi_seterr(err, DSI_ETLS, "the TLS certificate file holds no certificate");
    if (rc) {
        dsi__tls_creds_free(c);
        return rc;
    }
    *out = c;
    return 0;
}

void dsi__tls_creds_free(struct dsi__tls_creds *c) {
    while (c) {
        struct dsi__tls_creds *older = c->older;
        for (unsigned i = 0; i < c->n_pcert; i++) gnutls_pcert_deinit(&c->pcert[i]);
        if (c->key) gnutls_privkey_deinit(c->key);
        free(c);
        c = older;
    }
}

/* gnutls_certificate_retrieve_function2: the current certificate chain and key. */
int dsi__tls_retrieve(gnutls_session_t ss, const gnutls_datum_t *req_ca_dn, int nreqs,
                      const gnutls_pk_algorithm_t *pk_algos, int pk_algos_length, gnutls_pcert_st **pcert,
                      unsigned int *pcert_length, gnutls_privkey_t *privkey) {
    (void)req_ca_dn, (void)nreqs, (void)pk_algos, (void)pk_algos_length;
    struct MHD_Connection *conn = gnutls_session_get_ptr(ss);
    const union MHD_ConnectionInfo *ci = conn ? MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT) : NULL;
    const struct dsi__conn *k = ci ? ci->socket_context : NULL;
    struct dsi_server *s = k ? k->s : NULL;
    if (!s) return -1; /* fails the handshake rather than guessing */
    pthread_mutex_lock(&s->tls_mu);
    struct dsi__tls_creds *c = s->creds;
    pthread_mutex_unlock(&s->tls_mu);
    if (!c) return -1;
    *pcert = c->pcert;
    *pcert_length = c->n_pcert;
    *privkey = c->key;
    return 0;
}

/* TLS 1.3 only, and only elliptic-curve key exchange: a finite-field group
 * (FFDHE) costs the server ~250x the CPU of X25519 per handshake and lets one
 * unauthenticated client burn a core. The post-quantum hybrid comes first when
 * this GnuTLS knows it (3.8.9+); Debian 12's 3.7.9 does not, and an unknown
 * group name would make the whole string invalid, hence the probe. */
#define TLS_BASE "NORMAL:-VERS-ALL:+VERS-TLS1.3:-GROUP-ALL"
#define TLS_EC_GROUPS ":+GROUP-X25519:+GROUP-SECP256R1:+GROUP-SECP384R1"
const char *dsi__tls_priorities(void) {
    static const char *const cand[] = {TLS_BASE ":+GROUP-X25519-MLKEM768" TLS_EC_GROUPS, TLS_BASE TLS_EC_GROUPS};
    for (size_t i = 0; i + 1 < sizeof cand / sizeof cand[0]; i++) {
        gnutls_priority_t p;
        if (gnutls_priority_init(&p, cand[i], NULL) == GNUTLS_E_SUCCESS) {
            gnutls_priority_deinit(p);
            return cand[i];
        }
    }
    return cand[sizeof cand / sizeof cand[0] - 1];
}

int dsi__tls_reload(struct dsi_server *s, const char *cert_file, const char *key_file, const char *state_dir,
                    char **err) {
    char *cert = NULL, *key = NULL, fp[97];
    int rc = dsi__tls_material(cert_file, key_file, state_dir, &cert, &key, fp, err);
    if (rc) return rc;
    struct dsi__tls_creds *c = NULL;
    rc = dsi__tls_creds_load(cert, key, &c, err);
    memset(key, 0, strlen(key));
    free(key);
    free(cert);
    if (rc) return rc;
    pthread_mutex_lock(&s->tls_mu);
    c->older = s->creds;
    s->creds = c;
    pthread_mutex_unlock(&s->tls_mu);
    snprintf(s->fingerprint, sizeof s->fingerprint, "%s", fp);
    dsi_log(DSI_LOG_INFO, "tls", "certificate reloaded; new handshakes use SHA-256 fingerprint %s", fp);
    return 0;
}
