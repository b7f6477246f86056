/*
 * tls.c: TLS material for the listener. Either the configured PEM files, or a
 * self-signed ECDSA P-256 certificate kept in state_dir (tls-cert.pem,
 * tls-key.pem with mode 0600): created on first start, reused afterwards, with
 * its SHA-256 fingerprint logged so that clients can pin it.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "dsinfer/err.h"
#include "dsinfer/fileio.h"
#include "dsinfer/log.h"
#include "internal.h"

#define MAX_PEM_BYTES (1u << 20)

static int fingerprint_of(const char *cert_pem, char fp[97], char **err) {
    gnutls_x509_crt_t crt;
    if (gnutls_x509_crt_init(&crt) < 0) return dsi_seterr(err, DSI_ENOMEM, "gnutls_x509_crt_init failed");
    gnutls_datum_t d = {(unsigned char *)cert_pem, (unsigned)strlen(cert_pem)};
    unsigned char md[32];
    size_t md_len = sizeof md;
    int r = gnutls_x509_crt_import(crt, &d, GNUTLS_X509_FMT_PEM);
    if (r >= 0) r = gnutls_x509_crt_get_fingerprint(crt, GNUTLS_DIG_SHA256, md, &md_len);
    gnutls_x509_crt_deinit(crt);
    if (r < 0 || md_len != 32) return dsi_seterr(err, DSI_ETLS, "cannot read certificate: %s", gnutls_strerror(r));
    for (size_t i = 0; i < 32; i++) snprintf(fp + 3 * i, 4, "%02X%s", md[i], i == 31 ? "" : ":");
    return 0;
}

/* Creates a self-signed ECDSA P-256 certificate for localhost (10 years). */
static int make_self_signed(char **cert_pem, char **key_pem, char **err) {
    gnutls_x509_privkey_t key = NULL;
    gnutls_x509_crt_t crt = NULL;
    gnutls_datum_t c = {0}, k = {0};
    int rc = DSI_ETLS, r;
    const char *errp = NULL;
    unsigned char serial[16];
    unsigned char ip[4] = {127, 0, 0, 1};
    time_t now = time(NULL);
    if ((r = gnutls_x509_privkey_init(&key)) < 0) goto fail;
    if ((r = gnutls_x509_privkey_generate(key, GNUTLS_PK_ECDSA, GNUTLS_CURVE_TO_BITS(GNUTLS_ECC_CURVE_SECP256R1), 0)) < 0)
        goto fail;
    if ((r = gnutls_x509_crt_init(&crt)) < 0) goto fail;
    if ((r = gnutls_rnd(GNUTLS_RND_NONCE, serial, sizeof serial)) < 0) goto fail;
    serial[0] &= 0x7f; /* positive INTEGER */
    if ((r = gnutls_x509_crt_set_version(crt, 3)) < 0 || (r = gnutls_x509_crt_set_serial(crt, serial, sizeof serial)) < 0 ||
        (r = gnutls_x509_crt_set_activation_time(crt, now - 3600)) < 0 ||
        (r = gnutls_x509_crt_set_expiration_time(crt, now + 10L * 365 * 86400)) < 0 ||
        (r = gnutls_x509_crt_set_dn(crt, "CN=localhost", &errp)) < 0 ||
        (r = gnutls_x509_crt_set_subject_alt_name(crt, GNUTLS_SAN_DNSNAME, "localhost", 9, GNUTLS_FSAN_SET)) < 0 ||
        (r = gnutls_x509_crt_set_subject_alt_name(crt, GNUTLS_SAN_IPADDRESS, ip, 4, GNUTLS_FSAN_APPEND)) < 0 ||
        (r = gnutls_x509_crt_set_key(crt, key)) < 0 ||
        /* CA:TRUE like `openssl req -x509`, so clients accept it as its own trust anchor. */
        (r = gnutls_x509_crt_set_basic_constraints(crt, 1, -1)) < 0 ||
        (r = gnutls_x509_crt_set_key_usage(crt, GNUTLS_KEY_DIGITAL_SIGNATURE | GNUTLS_KEY_KEY_CERT_SIGN)) < 0 ||
        (r = gnutls_x509_crt_set_key_purpose_oid(crt, GNUTLS_KP_TLS_WWW_SERVER, 0)) < 0 ||
        (r = gnutls_x509_crt_sign2(crt, crt, key, GNUTLS_DIG_SHA256, 0)) < 0 ||
        (r = gnutls_x509_crt_export2(crt, GNUTLS_X509_FMT_PEM, &c)) < 0 ||
        (r = gnutls_x509_privkey_export2(key, GNUTLS_X509_FMT_PEM, &k)) < 0)
        goto fail;
    *cert_pem = strndup((const char *)c.data, c.size);
    *key_pem = strndup((const char *)k.data, k.size);
    if (!*cert_pem || !*key_pem) {
        free(*cert_pem);
        free(*key_pem);
        *cert_pem = *key_pem = NULL;
        rc = dsi_seterr(err, DSI_ENOMEM, "out of memory");
        goto out;
    }
    rc = 0;
    goto out;
fail:
    rc = dsi_seterr(err, DSI_ETLS, "cannot create a self-signed certificate: %s", gnutls_strerror(r));
out:
    if (k.data) {
        memset(k.data, 0, k.size); /* key material is wiped before it is freed */
        gnutls_free(k.data);
    }
    gnutls_free(c.data);
    if (crt) gnutls_x509_crt_deinit(crt);
    if (key) gnutls_x509_privkey_deinit(key);
    return rc;
}

int dsi__tls_material(const char *cert_file, const char *key_file, const char *state_dir, char **cert_pem,
                      char **key_pem, char fp[97], char **err) {
    *cert_pem = *key_pem = NULL;
    bool have_cert = cert_file && cert_file[0], have_key = key_file && key_file[0];
    int rc;
    if (have_cert != have_key)
        return dsi_seterr(err, DSI_EINVAL, "set both tls_cert and tls_key, or neither (for a self-signed certificate)");
    char cpath[4096], kpath[4096];
    if (have_cert) {
        snprintf(cpath, sizeof cpath, "%s", cert_file);
        snprintf(kpath, sizeof kpath, "%s", key_file);
    } else {
        if (!state_dir || !state_dir[0])
            return dsi_seterr(err, DSI_EINVAL, "no tls_cert/tls_key and no state_dir for a self-signed certificate");
        if (snprintf(cpath, sizeof cpath, "%s/tls-cert.pem", state_dir) >= (int)sizeof cpath ||
            snprintf(kpath, sizeof kpath, "%s/tls-key.pem", state_dir) >= (int)sizeof kpath)
            return dsi_seterr(err, DSI_ERANGE, "state_dir path too long");
        if (access(cpath, F_OK) != 0 && access(kpath, F_OK) != 0) {
            if (mkdir(state_dir, 0700) != 0 && errno != EEXIST)
                return dsi_seterr(err, DSI_EIO, "cannot create state_dir %s: %s", state_dir, strerror(errno));
            if ((rc = make_self_signed(cert_pem, key_pem, err))) return rc;
            size_t kl = strlen(*key_pem);
            /* atomic and durable (fileio.h): a crash never leaves half a key or certificate */
            if ((rc = dsi_write_file_atomic(kpath, *key_pem, kl, 0600, err)) ||
                (rc = dsi_write_file_atomic(cpath, *cert_pem, strlen(*cert_pem), 0644, err)))
                goto fail;
            if ((rc = fingerprint_of(*cert_pem, fp, err))) goto fail;
            dsi_log(DSI_LOG_WARN, "tls", "created self-signed certificate %s (CN=localhost); SHA-256 fingerprint %s",
                    cpath, fp);
            return 0;
        }
    }
    if ((rc = dsi_read_file(cpath, MAX_PEM_BYTES, cert_pem, NULL, err)) ||
        (rc = dsi_read_file(kpath, MAX_PEM_BYTES, key_pem, NULL, err)))
        goto fail;
    if ((rc = fingerprint_of(*cert_pem, fp, err))) goto fail;
    dsi_log(DSI_LOG_INFO, "tls", "certificate %s%s; SHA-256 fingerprint %s", cpath,
            have_cert ? "" : " (self-signed, from state_dir)", fp);
    return 0;
fail:
    if (*key_pem) memset(*key_pem, 0, strlen(*key_pem));
    free(*key_pem);
    free(*cert_pem);
    *cert_pem = *key_pem = NULL;
    return rc;
}

bool dsi__host_is_loopback(const char *host) {
    if (!strcmp(host, "localhost") || !strcmp(host, "::1")) return true;
    struct in_addr a;
    if (inet_pton(AF_INET, host, &a) == 1) return (ntohl(a.s_addr) >> 24) == 127;
    return false;
}

int dsi__split_listen(const char *listen, char *host, size_t host_cap, int *port) {
    if (!listen) return DSI_EINVAL;
    const char *colon;
    size_t hl;
    if (listen[0] == '[') {
        const char *rb = strchr(listen, ']');
        if (!rb || rb[1] != ':') return DSI_EINVAL;
        hl = (size_t)(rb - listen - 1);
        colon = rb + 1;
        listen++;
    } else {
        colon = strrchr(listen, ':');
        if (!colon) return DSI_EINVAL;
        hl = (size_t)(colon - listen);
    }
    if (hl == 0 || hl >= host_cap) return DSI_EINVAL;
    memcpy(host, listen, hl);
    host[hl] = 0;
    char *end;
    long p = strtol(colon + 1, &end, 10);
    if (*end || end == colon + 1 || p < 0 || p > 65535) return DSI_EINVAL;
    *port = (int)p;
    return 0;
}
