/*
 * cmd_doctor.c: `dsinfer doctor [--config FILE] [--verify] [--option value ...]`.
 *
 * Checks what usually keeps a fresh install from serving, one line per check:
 *   OK   <check>: ...     WARN <check>: ...     FAIL <check>: ...
 * config validity; model directory, config.json and SHA256SUMS (full hash check
 * with --verify); GPU visibility, driver and free memory against the weights;
 * TLS certificate validity, expiry and key match; keys file permissions; state
 * directory and audit log writability. Exit status 1 when any check FAILs.
 *
 * --json prints one JSON object instead of the lines (the checks, plus the
 * facts per GPU: memory, compute capability, ECC, temperature from NVML when
 * libnvidia-ml is present) for scripts such as deploy/ci/hardware_test.sh. An
 * encrypted model (dsinfer encrypt) is checked with its model_key_file.
 *
 * The CUDA runtime is loaded with dlopen, so doctor (and the binary) work on
 * machines without CUDA; doctor reads and probes, and never changes a file
 * (writability is tested with a temporary file that is removed at once).
 */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "cli.h"
#include "doctor_gpu.h"
#include "dsinfer/config.h"
#include "dsinfer/err.h"
#include "dsinfer/model.h"
#include "dsinfer/wenc.h"

#define DEFAULT_CONFIG "/etc/dsinfer/dsinfer.json"
#define SERVICE_USER "dsinfer" /* User= of systemd/dsinfer.service */
#define CERT_WARN_DAYS 30

enum level { OK, WARN, FAIL };

struct doctor {
    int n[3]; /* checks per level */
    const struct dsi_config *c;
    bool verify;         /* --verify: hash every model file */
    size_t weight_bytes; /* estimate for the configured dtype; 0: unknown */
    const char *user;    /* --service-user: judge files as this user when run as root; "": no */
    cJSON *checks;       /* --json: the reports; NULL: print lines */
    cJSON *facts;        /* --json: {"gpus": [...], "cuda_driver": ..., ...} */
};

static void report(struct doctor *d, enum level l, const char *check, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void check_model(struct doctor *d);
static void check_gpu(struct doctor *d);
static void check_tls(struct doctor *d);
static void check_keys(struct doctor *d);
static void check_dirs(struct doctor *d);

static void report(struct doctor *d, enum level l, const char *check, const char *fmt, ...) {
    static const char *const tag[] = {"OK  ", "WARN", "FAIL"}, *const name[] = {"ok", "warn", "fail"};
    d->n[l]++;
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (d->checks) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "level", name[l]);
        cJSON_AddStringToObject(o, "check", check);
        cJSON_AddStringToObject(o, "message", msg);
        cJSON_AddItemToArray(d->checks, o);
        return;
    }
    printf("%s %s: %s\n", tag[l], check, msg);
    fflush(stdout);
}

static void usage(FILE *f) {
    fprintf(f, "usage: dsinfer doctor [--config FILE] [--verify] [--json] [--option value ...]\n"
               "  --config FILE  config to check (default " DEFAULT_CONFIG
               " when it exists; the last one counts)\n"
               "  --verify       also hash every model file against SHA256SUMS (slow for big models)\n"
               "  --json         one JSON object: checks, counts, and per GPU memory, ECC, temperature\n"
               "  --service-user NAME  run as root, judge files as this user would (default " SERVICE_USER
               "; \"\" for no)\n"
               "  --model DIR    same as --model-dir DIR; any `serve` option overrides the file\n"
               "One line per check: OK, WARN or FAIL. Exit status 1 when any check FAILs.\n");
}

static const char *human_bytes(double b, char *buf, size_t n) {
    if (b < 1024.0 * 1024.0 * 1024.0)
        snprintf(buf, n, "%.1f MiB", b / (1024.0 * 1024.0));
    else
        snprintf(buf, n, "%.2f GiB", b / (1024.0 * 1024.0 * 1024.0));
    return buf;
}

/* ---- model ---- */

/* Bytes the weights take in memory as `dtype`: int8 stores matrices as 1 byte per
 * element plus one f32 scale per row (per group when int8_group_size is set);
 * vectors (norms, biases) stay f32. An estimate, close enough to compare with
 * free memory. */
static size_t estimate_weight_bytes(const struct dsi_safetensors *st, const struct dsi_config *c) {
    size_t total = 0;
    for (size_t i = 0; i < st->n_tensors; i++) {
        const struct dsi_tensor *t = &st->tensors[i];
        size_t n = t->n_elems, b;
        if (strcmp(c->dtype, "f32") == 0) {
            b = n * 4;
        } else if (strcmp(c->dtype, "bf16") == 0) {
            b = n * 2;
        } else if (t->n_dims >= 2 && t->shape[0] > 0) {
            size_t rows = (size_t)t->shape[0];
            size_t groups = c->int8_group_size > 0 ? n / (size_t)c->int8_group_size : rows;
            b = n + (groups ? groups : 1) * 4;
        } else {
            b = n * 4;
        }
        if (b > SIZE_MAX - total) return SIZE_MAX;
        total += b;
    }
    return total;
}

/* true when the SHA-256 of the file at path is hex (either case). */
static bool pin_matches(const char *path, const char *hex) {
    FILE *f = fopen(path, "rb");
    if (!f) return false;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    bool ok = ctx && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) == 1;
    unsigned char buf[65536], md[EVP_MAX_MD_SIZE];
    size_t n;
    while (ok && (n = fread(buf, 1, sizeof buf, f)) > 0)
        ok = EVP_DigestUpdate(ctx, buf, n) == 1;
    unsigned md_len = 0;
    ok = ok && !ferror(f) && EVP_DigestFinal_ex(ctx, md, &md_len) == 1 && md_len == 32 && strlen(hex) == 64;
    fclose(f);
    EVP_MD_CTX_free(ctx);
    for (unsigned i = 0; ok && i < md_len; i++) {
        char two[3];
        snprintf(two, sizeof two, "%02x", md[i]);
        ok = strncasecmp(two, hex + 2 * i, 2) == 0;
    }
    return ok;
}

/* config.json of the model, decrypted with model_key_file when the folder is
 * encrypted at rest (the key is wiped before return). */
static int load_model_config(struct doctor *d, const char *dir, struct dsi_model_config *mc, bool *encrypted,
                             char **err) {
    char path[PATH_MAX];
    unsigned char magic[8];
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "rb");
    *encrypted = f && fread(magic, 1, sizeof magic, f) == sizeof magic && dsi_wenc_is_encrypted(magic, 8);
    if (f) fclose(f);
    if (!*encrypted) return dsi_model_config_load(dir, mc, err);
    const char *kf = d->c->model_key_file;
    if (!kf[0]) return dsi_seterr(err, DSI_EPERM, "%s is encrypted at rest; model_key_file is not set", dir);
    struct dsi_wenc_key k;
    struct dsi_wenc_plain p;
    int rc = dsi_wenc_key_load(kf, &k, err);
    if (rc) return rc;
    rc = dsi_wenc_decrypt_file(&k, path, &p, 1, err);
    dsi_wenc_key_wipe(&k);
    if (rc) return rc;
    rc = dsi_model_config_parse((const char *)p.data, p.len, mc, err);
    dsi_wenc_plain_free(&p);
    if (!rc) report(d, OK, "model key", "%s opens %s (encrypted at rest)", kf, path);
    return rc;
}

static void check_model(struct doctor *d) {
    const struct dsi_config *c = d->c;
    const char *dir = c->model_dir;
    struct stat sb;
    if (!dir[0]) {
        report(d, FAIL, "model", "model_dir is not set");
        return;
    }
    if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode)) {
        report(d, FAIL, "model", "%s: %s", dir, errno ? strerror(errno) : "not a directory");
        return;
    }
    char *err = NULL;
    struct dsi_model_config mc;
    bool encrypted = false;
    int rc = load_model_config(d, dir, &mc, &encrypted, &err);
    if (rc < 0) {
        report(d, FAIL, "model", "%s", err ? err : dsi_strerror(rc));
        free(err);
        return;
    }
    report(d, OK, "model", "%s: %s, %d layers, hidden %d, vocab %d", dir, mc.architecture, mc.n_layers,
           mc.hidden_size, mc.vocab_size);
    err = NULL;
    rc = dsi_model_config_runnable(&mc, &err);
    if (rc < 0) report(d, FAIL, "model", "this build cannot run it: %s", err ? err : dsi_strerror(rc));
    free(err);
    err = NULL;

    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/SHA256SUMS", dir);
    if (access(path, R_OK) != 0) {
        report(d, c->skip_verify ? WARN : FAIL, "manifest",
               "%s: %s; create it with `dsinfer manifest %s` from a trusted copy", path, strerror(errno),
               dir);
    } else if (c->manifest_sha256[0] && !pin_matches(path, c->manifest_sha256)) {
        report(d, FAIL, "manifest", "%s does not have the pinned SHA-256 manifest_sha256 = %s", path,
               c->manifest_sha256);
    } else if (d->verify) {
        struct dsi_manifest_opts o;
        memset(&o, 0, sizeof o);
        size_t bytes = 0;
        rc = dsi_manifest_verify(dir, &o, &bytes, &err);
        char hb[32];
        if (rc < 0)
            report(d, FAIL, "manifest", "%s", err ? err : dsi_strerror(rc));
        else
            report(d, OK, "manifest", "every file matches SHA256SUMS (%s hashed)",
                   human_bytes((double)bytes, hb, sizeof hb));
        free(err);
        err = NULL;
    } else {
        report(d, OK, "manifest", "%s present (hashes checked at start; --verify checks them now)", path);
    }

    if (encrypted) {
        report(d, OK, "weights", "encrypted at rest: decrypted and checked at load (GCM tags)");
        return;
    }
    struct dsi_safetensors st;
    memset(&st, 0, sizeof st);
    rc = dsi_st_open_dir(&st, dir, &err);
    if (rc < 0) {
        report(d, FAIL, "weights", "%s", err ? err : dsi_strerror(rc));
    } else {
        char hb[32];
        d->weight_bytes = estimate_weight_bytes(&st, c);
        report(d, OK, "weights", "%zu tensors, about %s as %s", st.n_tensors,
               human_bytes((double)d->weight_bytes, hb, sizeof hb), c->dtype);
    }
    free(err);
    dsi_st_close(&st);
}

/* ---- GPU, through the CUDA runtime loaded at run time ---- */

struct cudart {
    void *lib;
    int (*get_device_count)(int *);
    int (*driver_get_version)(int *);
    int (*runtime_get_version)(int *);
    int (*set_device)(int);
    int (*mem_get_info)(size_t *, size_t *);
    int (*device_get_attribute)(int *, int, int);
    const char *(*get_error_string)(int);
};

/* cudaDeviceAttr values of the compute capability (stable across CUDA versions). */
enum { CUDA_ATTR_CC_MAJOR = 75, CUDA_ATTR_CC_MINOR = 76, CUDA_ATTR_ECC_ENABLED = 32 };

static bool cudart_open(struct cudart *r, const char **which) {
    /* CUDA 11's runtime keeps the soname libcudart.so.11.0 for every 11.x (Debian's
     * 11.8 packages, deploy/docker/Dockerfile.cuda) */
    static const char *const names[] = {"libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0",
                                        "libcudart.so"};
    memset(r, 0, sizeof *r);
    for (size_t i = 0; i < sizeof names / sizeof names[0] && !r->lib; i++) {
        r->lib = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
        *which = names[i];
    }
    if (!r->lib) return false;
    /* POSIX guarantees dlsym results convert to function pointers */
    *(void **)&r->get_device_count = dlsym(r->lib, "cudaGetDeviceCount");
    *(void **)&r->driver_get_version = dlsym(r->lib, "cudaDriverGetVersion");
    *(void **)&r->runtime_get_version = dlsym(r->lib, "cudaRuntimeGetVersion");
    *(void **)&r->set_device = dlsym(r->lib, "cudaSetDevice");
    *(void **)&r->mem_get_info = dlsym(r->lib, "cudaMemGetInfo");
    *(void **)&r->device_get_attribute = dlsym(r->lib, "cudaDeviceGetAttribute");
    *(void **)&r->get_error_string = dlsym(r->lib, "cudaGetErrorString");
    if (!r->get_device_count || !r->driver_get_version || !r->runtime_get_version || !r->set_device ||
        !r->mem_get_info || !r->device_get_attribute || !r->get_error_string) {
        dlclose(r->lib);
        r->lib = NULL;
        return false;
    }
    return true;
}

static void check_gpu(struct doctor *d) {
    const struct dsi_config *c = d->c;
    bool need = strcmp(c->backend, "cuda") == 0;
    enum level miss = need ? FAIL : WARN;
    struct cudart r;
    const char *which = NULL;
    if (!cudart_open(&r, &which)) {
        report(d, miss, "gpu", "CUDA runtime (libcudart.so.13, .12 or .11.0) not found: %s",
               need ? "backend cuda cannot start" : "the cpu backend will be used");
        return;
    }
    int drv = 0, rt = 0, n = 0;
    r.driver_get_version(&drv);
    r.runtime_get_version(&rt);
    int e = r.get_device_count(&n);
    if (e != 0 || n <= 0) {
        report(d, miss, "gpu", "no CUDA device: %s (driver %d.%d, runtime %d.%d)%s",
               e ? r.get_error_string(e) : "none found", drv / 1000, drv % 1000 / 10, rt / 1000,
               rt % 1000 / 10, need ? "; backend cuda cannot start" : "; the cpu backend will be used");
        dlclose(r.lib);
        return;
    }
    if (d->facts) {
        char v[32];
        snprintf(v, sizeof v, "%d.%d", drv / 1000, drv % 1000 / 10);
        cJSON_AddStringToObject(d->facts, "cuda_driver", v);
        snprintf(v, sizeof v, "%d.%d", rt / 1000, rt % 1000 / 10);
        cJSON_AddStringToObject(d->facts, "cuda_runtime", v);
    }
    enum level l = drv < rt ? miss : OK;
    report(d, l, "driver", "CUDA driver %d.%d, runtime %d.%d (%s)%s", drv / 1000, drv % 1000 / 10, rt / 1000,
           rt % 1000 / 10, which, drv < rt ? ": the driver is older than the runtime; update it" : "");
    int tp = c->tensor_parallel > 0 ? c->tensor_parallel : 1;
    if (c->device + tp > n) {
        report(d, miss, "gpu", "%d CUDA device(s), but device %d and tensor_parallel %d need %d", n,
               c->device, tp, c->device + tp);
        dlclose(r.lib);
        return;
    }
    size_t per_dev = d->weight_bytes / (size_t)tp;
    for (int dev = c->device; dev < c->device + tp; dev++) {
        int major = 0, minor = 0;
        size_t free_b = 0, total_b = 0;
        r.device_get_attribute(&major, CUDA_ATTR_CC_MAJOR, dev);
        r.device_get_attribute(&minor, CUDA_ATTR_CC_MINOR, dev);
        e = r.set_device(dev);
        if (e == 0) e = r.mem_get_info(&free_b, &total_b);
        if (e != 0) {
            report(d, miss, "gpu", "device %d (sm_%d%d): %s", dev, major, minor, r.get_error_string(e));
            continue;
        }
        if (d->facts) {
            int ecc = 0, temp = -1;
            r.device_get_attribute(&ecc, CUDA_ATTR_ECC_ENABLED, dev);
            cJSON *g = cJSON_CreateObject();
            cJSON_AddNumberToObject(g, "index", dev);
            cJSON_AddNumberToObject(g, "compute_capability", major * 10 + minor);
            cJSON_AddNumberToObject(g, "free_bytes", (double)free_b);
            cJSON_AddNumberToObject(g, "total_bytes", (double)total_b);
            cJSON_AddBoolToObject(g, "ecc_enabled", ecc != 0);
            if (dsi__doctor_gpu_temperature(dev, &temp) == 0)
                cJSON_AddNumberToObject(g, "temperature_c", temp);
            else
                cJSON_AddNullToObject(g, "temperature_c");
            cJSON_AddItemToArray(cJSON_GetObjectItem(d->facts, "gpus"), g);
        }
        char fb[32], tb[32], wb[32];
        human_bytes((double)free_b, fb, sizeof fb);
        human_bytes((double)total_b, tb, sizeof tb);
        human_bytes((double)per_dev, wb, sizeof wb);
        if (!need) {
            report(d, OK, "gpu", "device %d (sm_%d%d): %s free of %s (backend cpu: not used)", dev, major,
                   minor, fb, tb);
        } else if (d->weight_bytes == 0) {
            report(d, WARN, "gpu", "device %d (sm_%d%d): %s free of %s; weight size unknown", dev, major,
                   minor, fb, tb);
        } else if ((double)per_dev > (double)free_b * c->kv_gpu_fraction) {
            report(d, FAIL, "gpu",
                   "device %d: weights need %s but kv_gpu_fraction %.2f of %s free leaves less%s", dev, wb,
                   c->kv_gpu_fraction, fb, strcmp(c->dtype, "int8") ? "; try dtype int8" : "");
        } else if ((double)per_dev > (double)free_b * c->kv_gpu_fraction * 0.9) {
            report(d, WARN, "gpu", "device %d: weights need %s of %s free: little room for the KV cache", dev,
                   wb, fb);
        } else {
            report(d, OK, "gpu", "device %d (sm_%d%d): %s free of %s, weights need %s", dev, major, minor, fb,
                   tb, wb);
        }
    }
    dlclose(r.lib);
}

/* ---- TLS ---- */

/* Refuses passphrase prompts: the daemon cannot type one either. */
static int no_passphrase(char *buf, int size, int rwflag, void *u) {
    (void)buf, (void)size, (void)rwflag, (void)u;
    return -1;
}

/* Checks one certificate's validity window. Returns the certificate (caller frees) or NULL. */
static X509 *check_cert_file(struct doctor *d, const char *check, const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) {
        report(d, FAIL, check, "%s: %s", path, strerror(errno));
        return NULL;
    }
    X509 *x = PEM_read_X509(f, NULL, no_passphrase, NULL);
    fclose(f);
    if (!x) {
        report(d, FAIL, check, "%s: not a PEM certificate", path);
        return NULL;
    }
    char subject[256] = "?", until[64] = "?";
    X509_NAME_oneline(X509_get_subject_name(x), subject, sizeof subject);
    struct tm tm;
    if (ASN1_TIME_to_tm(X509_get0_notAfter(x), &tm) == 1)
        strftime(until, sizeof until, "%Y-%m-%d %H:%M UTC", &tm);
    int day = 0, sec = 0;
    if (ASN1_TIME_diff(&day, &sec, NULL, X509_get0_notBefore(x)) == 1 && (day > 0 || sec > 0)) {
        report(d, FAIL, check, "%s (%s) is not valid yet", path, subject);
    } else if (ASN1_TIME_diff(&day, &sec, NULL, X509_get0_notAfter(x)) != 1) {
        report(d, FAIL, check, "%s: unreadable expiry date", path);
    } else if (day < 0 || sec < 0 || (day == 0 && sec == 0)) {
        report(d, FAIL, check, "%s (%s) expired on %s", path, subject, until);
    } else if (day < CERT_WARN_DAYS) {
        report(d, WARN, check, "%s (%s) expires in %d days (%s): renew it, then systemctl reload dsinfer",
               path, subject, day, until);
    } else {
        report(d, OK, check, "%s (%s) valid until %s (%d days)", path, subject, until, day);
    }
    return x;
}

static void check_tls(struct doctor *d) {
    const struct dsi_config *c = d->c;
    if (c->plain_http) {
        report(d, WARN, "tls", "plain_http: no TLS on %s (loopback only)", c->listen);
        return;
    }
    if (!c->tls_cert[0]) {
        /* the server's self-signed certificate (src/server/tls.c names it) */
        char self[PATH_MAX];
        snprintf(self, sizeof self, "%s/tls-cert.pem", c->state_dir);
        if (access(self, F_OK) == 0) {
            report(d, WARN, "tls", "no tls_cert: using the self-signed %s; clients must trust it explicitly",
                   self);
            X509_free(check_cert_file(d, "tls cert", self));
        } else {
            report(d, WARN, "tls",
                   "no tls_cert: dsinfer makes a self-signed certificate in %s at first start; "
                   "clients must trust it explicitly",
                   c->state_dir);
        }
    } else {
        X509 *x = check_cert_file(d, "tls cert", c->tls_cert);
        /* Under systemd the key arrives as a credential that exists only inside the
         * service; outside it, check the file LoadCredential= reads. */
        const char *key = c->tls_key;
        char alt[PATH_MAX];
        if (access(key, F_OK) != 0 && strncmp(key, "/run/credentials/", 17) == 0) {
            const char *base = strrchr(key, '/');
            snprintf(alt, sizeof alt, "/etc/dsinfer%s", base);
            report(d, OK, "tls key",
                   "%s exists only inside the running service (LoadCredential=); checking %s", key, alt);
            key = alt;
        }
        struct stat sb;
        FILE *f = fopen(key, "r");
        if (!f) {
            report(d, errno == EACCES ? WARN : FAIL, "tls key", "%s: %s%s", key, strerror(errno),
                   errno == EACCES ? " (run doctor as root)" : "");
        } else {
            EVP_PKEY *k = PEM_read_PrivateKey(f, NULL, no_passphrase, NULL);
            if (fstat(fileno(f), &sb) == 0 && (sb.st_mode & S_IROTH))
                report(d, FAIL, "tls key", "%s is readable by everyone (mode %04o): chmod 600 %s", key,
                       (unsigned)(sb.st_mode & 07777), key);
            fclose(f);
            if (!k)
                report(d, FAIL, "tls key", "%s: not an unencrypted PEM private key", key);
            else if (x && X509_check_private_key(x, k) != 1)
                report(d, FAIL, "tls key", "%s does not match the certificate %s", key, c->tls_cert);
            else if (x)
                report(d, OK, "tls key", "%s matches the certificate", key);
            EVP_PKEY_free(k);
        }
        X509_free(x);
    }
    if (c->tls_client_ca[0]) X509_free(check_cert_file(d, "tls client ca", c->tls_client_ca));
}

/* ---- keys file, state directory, audit log ---- */

/* The service user, when doctor runs as root and it exists: checks then judge the
 * files as dsinfer will see them, not as root does. */
static const struct passwd *service_user(const struct doctor *d) {
    return geteuid() == 0 && d->user[0] ? getpwnam(d->user) : NULL;
}

static void check_keys(struct doctor *d) {
    const char *path = d->c->keys_file;
    if (!path[0]) {
        report(d, WARN, "keys",
               "no keys_file: every API route answers 401 (create keys with `dsinfer keys add`)");
        return;
    }
    struct stat sb;
    if (stat(path, &sb) != 0) {
        report(d, FAIL, "keys", "%s: %s (create it with `dsinfer keys add`)", path, strerror(errno));
        return;
    }
    if (!S_ISREG(sb.st_mode)) {
        report(d, FAIL, "keys", "%s is not a regular file", path);
        return;
    }
    unsigned mode = (unsigned)(sb.st_mode & 07777);
    if (sb.st_mode & (S_IRWXG | S_IRWXO)) {
        report(d, FAIL, "keys", "%s is mode %04o: group or others can read or change it; chmod 600 %s", path,
               mode, path);
        return;
    }
    const struct passwd *pw = service_user(d);
    if (pw && sb.st_uid != pw->pw_uid) {
        report(d, FAIL, "keys", "%s is owned by uid %u, so the service user %s cannot read it; chown %s %s",
               path, (unsigned)sb.st_uid, d->user, d->user, path);
        return;
    }
    report(d, OK, "keys", "%s is mode %04o", path, mode);
}

/* true when a temporary file can be created (and is removed) in dir. */
static bool dir_writable(const char *dir, int *err_no) {
    char tmpl[PATH_MAX];
    if (snprintf(tmpl, sizeof tmpl, "%s/.dsinfer-doctor-XXXXXX", dir) >= (int)sizeof tmpl) {
        *err_no = ENAMETOOLONG;
        return false;
    }
    int fd = mkstemp(tmpl);
    if (fd < 0) {
        *err_no = errno;
        return false;
    }
    close(fd);
    unlink(tmpl);
    return true;
}

/* Whether the service user may write into dir, judged from owner, group and mode. */
static bool user_may_write(const struct stat *sb, const struct passwd *pw) {
    if (sb->st_uid == pw->pw_uid) return (sb->st_mode & S_IWUSR) && (sb->st_mode & S_IXUSR);
    if (sb->st_gid == pw->pw_gid) return (sb->st_mode & S_IWGRP) && (sb->st_mode & S_IXGRP);
    return (sb->st_mode & S_IWOTH) && (sb->st_mode & S_IXOTH);
}

/* Checks that dir exists and is writable (for the service user when known).
 * systemd creates the directories of StateDirectory=/LogsDirectory= at start. */
static void check_writable_dir(struct doctor *d, const char *check, const char *dir, const char *what) {
    struct stat sb;
    if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode)) {
        bool systemd_makes = strcmp(dir, "/var/lib/dsinfer") == 0 || strcmp(dir, "/var/log/dsinfer") == 0;
        report(d, systemd_makes ? WARN : FAIL, check, "%s%s does not exist%s", what, dir,
               systemd_makes ? " (systemd creates it when dsinfer.service starts)" : "");
        return;
    }
    int e = 0;
    if (!dir_writable(dir, &e)) {
        report(d, FAIL, check, "%s%s is not writable: %s", what, dir, strerror(e));
        return;
    }
    const struct passwd *pw = service_user(d);
    if (pw && !user_may_write(&sb, pw)) {
        report(d, FAIL, check, "%s%s is not writable by the service user %s (owner uid %u, mode %04o)", what,
               dir, d->user, (unsigned)sb.st_uid, (unsigned)(sb.st_mode & 07777));
        return;
    }
    report(d, OK, check, "%s%s is writable", what, dir);
}

static void check_dirs(struct doctor *d) {
    const struct dsi_config *c = d->c;
    check_writable_dir(d, "state dir", c->state_dir, "");
    const char *log = c->audit_log;
    if (!log[0]) {
        report(d, WARN, "audit log", "no audit_log: requests are not recorded");
        return;
    }
    int fd = open(log, O_WRONLY | O_APPEND | O_CLOEXEC | O_NOCTTY);
    if (fd >= 0) {
        close(fd);
        report(d, OK, "audit log", "%s is writable", log);
        return;
    }
    if (errno != ENOENT) {
        report(d, FAIL, "audit log", "%s: %s", log, strerror(errno));
        return;
    }
    char parent[PATH_MAX];
    snprintf(parent, sizeof parent, "%s", log);
    char *slash = strrchr(parent, '/');
    if (slash == parent)
        slash[1] = '\0';
    else if (slash)
        *slash = '\0';
    else
        snprintf(parent, sizeof parent, ".");
    check_writable_dir(d, "audit log", parent, "new file in ");
}

/* ---- entry ---- */

/* "config: x" -> "x": the check name already says "config". */
static const char *strip_prefix(const char *err, const char *fallback) {
    if (!err) return fallback;
    return strncmp(err, "config: ", 8) == 0 ? err + 8 : err;
}

int dsi_cmd_doctor(int argc, char **argv) {
    const char *config_path = NULL;
    bool verify = false;
    struct dsi_config c;
    if (dsi_config_init(&c) < 0) {
        fprintf(stderr, "dsinfer doctor: out of memory\n");
        return DSI_EXIT_FAIL;
    }
    /* first pass: --config, so that the other flags override the file */
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            dsi_config_free(&c);
            return DSI_EXIT_OK;
        }
        if (strcmp(argv[i], "--config") == 0) {
            if (i + 1 >= argc) {
                usage(stderr);
                dsi_config_free(&c);
                return DSI_EXIT_USAGE;
            }
            config_path = argv[++i];
        }
    }
    if (!config_path && access(DEFAULT_CONFIG, F_OK) == 0) config_path = DEFAULT_CONFIG;

    struct doctor d = {.c = &c, .user = SERVICE_USER};
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "--json") == 0 && (i == 1 || strcmp(argv[i - 1], "--config"))) {
            d.checks = cJSON_CreateArray();
            d.facts = cJSON_CreateObject();
            cJSON_AddItemToObject(d.facts, "gpus", cJSON_CreateArray());
            break;
        }
    char *err = NULL;
    bool config_ok = true;
    if (config_path && dsi_config_load_file(&c, config_path, &err) < 0) {
        report(&d, FAIL, "config", "%s", strip_prefix(err, "cannot load"));
        config_ok = false;
    }
    free(err);
    err = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--config") == 0) {
            i++;
        } else if (strcmp(a, "--verify") == 0) {
            verify = true;
        } else if (strcmp(a, "--json") == 0) {
            continue; /* taken in the first pass */
        } else if (strcmp(a, "--service-user") == 0 && i + 1 < argc) {
            d.user = argv[++i];
        } else if (strncmp(a, "--", 2) == 0 && i + 1 < argc) {
            const char *name = strcmp(a, "--model") == 0 ? "model_dir" : a + 2;
            if (dsi_config_set(&c, name, argv[++i], &err) < 0) {
                fprintf(stderr, "dsinfer doctor: %s\n", err ? err : "bad option");
                free(err);
                dsi_config_free(&c);
                return DSI_EXIT_USAGE;
            }
        } else {
            fprintf(stderr, "dsinfer doctor: unexpected argument '%s'\n", a);
            usage(stderr);
            dsi_config_free(&c);
            return DSI_EXIT_USAGE;
        }
    }
    d.verify = verify;
    if (config_ok) {
        if (dsi_config_validate(&c, &err) < 0)
            report(&d, FAIL, "config", "%s", strip_prefix(err, "invalid"));
        else
            report(&d, OK, "config", "%s is valid", config_path ? config_path : "(built-in defaults)");
        free(err);
    }
    check_model(&d);
    check_gpu(&d);
    check_tls(&d);
    check_keys(&d);
    check_dirs(&d);
    if (d.checks) {
        cJSON *o = d.facts;
        cJSON_AddBoolToObject(o, "ok", d.n[FAIL] == 0);
        cJSON_AddNumberToObject(o, "n_ok", d.n[OK]);
        cJSON_AddNumberToObject(o, "n_warn", d.n[WARN]);
        cJSON_AddNumberToObject(o, "n_fail", d.n[FAIL]);
        cJSON_AddItemToObject(o, "checks", d.checks);
        char *text = cJSON_PrintUnformatted(o);
        printf("%s\n", text ? text : "{}");
        free(text);
        cJSON_Delete(o);
    } else {
        printf("doctor: %d ok, %d warnings, %d failures\n", d.n[OK], d.n[WARN], d.n[FAIL]);
    }
    dsi_config_free(&c);
    return d.n[FAIL] ? DSI_EXIT_FAIL : DSI_EXIT_OK;
}
