/* test_core.c: error table, logging, UTF-8 and file replacement. */
#include <dirent.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <stdint.h>

#include "dsinfer/alloc.h"
#include "dsinfer/clock.h"
#include "dsinfer/err.h"
#include "dsinfer/fileio.h"
#include "dsinfer/log.h"
#include "dsinfer/utf8.h"
#include "test.h"

TEST(err_names_and_messages_come_from_one_table) {
    CHECK_EQ_STR(dsi_err_name(DSI_EINVAL), "DSI_EINVAL");
    CHECK_EQ_STR(dsi_strerror(DSI_EINTEGRITY), "integrity check failed");
    CHECK_EQ_STR(dsi_err_name(12345), "DSI_UNKNOWN");
    CHECK(DSI_EINVAL < 0 && DSI_EINTERNAL < 0);
}

TEST(seterr_keeps_first_message) {
    char *e = NULL;
    CHECK_EQ_INT(dsi_seterr(&e, DSI_EIO, "first %d", 1), DSI_EIO);
    dsi_seterr(&e, DSI_EIO, "second");
    CHECK_EQ_STR(e, "first 1");
    free(e);
    CHECK_EQ_INT(dsi_seterr(NULL, DSI_ENOMEM, "ignored"), DSI_ENOMEM);
}

TEST(log_level_parse_rejects_unknown) {
    enum dsi_log_level l;
    CHECK_EQ_INT(dsi_log_parse_level("warn", &l), 0);
    CHECK_EQ_INT(l, DSI_LOG_WARN);
    CHECK_EQ_INT(dsi_log_parse_level("loud", &l), DSI_EINVAL);
    CHECK_EQ_INT(dsi_log_parse_level(NULL, &l), DSI_EINVAL);
}

TEST(utf8_valid_accepts_only_well_formed_text) {
    CHECK(dsi_utf8_valid("", 0));
    CHECK(dsi_utf8_valid("plain ascii, longer than eight bytes", 36));
    CHECK(dsi_utf8_valid("a\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80", 10)); /* e-acute, euro, emoji */
    CHECK(dsi_utf8_valid("\xf4\x8f\xbf\xbf", 4));                          /* U+10FFFF */
    CHECK(!dsi_utf8_valid("\xf4\x90\x80\x80", 4));                         /* above U+10FFFF */
    CHECK(!dsi_utf8_valid("\xc0\xaf", 2));                                 /* overlong '/' */
    CHECK(!dsi_utf8_valid("\xe0\x80\xaf", 3));                             /* overlong, 3 bytes */
    CHECK(!dsi_utf8_valid("\xed\xa0\x80", 3));                             /* surrogate U+D800 */
    CHECK(!dsi_utf8_valid("\xe2\x82", 2));                                 /* truncated */
    CHECK(!dsi_utf8_valid("\x80", 1));                                     /* lone continuation */
    CHECK(!dsi_utf8_valid("\xff", 1));
    CHECK(!dsi_utf8_valid("eight ok\xc3", 9));                              /* bad byte after the fast path */
    CHECK(!dsi_utf8_valid("twelve bytes\xe2\x28\xa1", 15));                /* bad continuation */
}

/* Entries of dir whose name contains ".tmp." (leftover temporaries). */
static int count_temps(const char *dir) {
    DIR *d = opendir(dir);
    int n = 0;
    for (struct dirent *de; d && (de = readdir(d));)
        n += strstr(de->d_name, ".tmp.") != NULL;
    if (d) closedir(d);
    return n;
}

TEST(utf8_printable_refuses_controls_and_malformed_text) {
    CHECK(dsi_utf8_printable("alice", 5));
    CHECK(dsi_utf8_printable("Ren\xc3\xa9"
                             "e \xe2\x82\xac \xf0\x9f\x98\x80",
                             15));
    CHECK(dsi_utf8_printable("\xc2\xa0", 2)); /* U+00A0, first after C1 */
    CHECK(!dsi_utf8_printable("a\x1b[31m", 6));
    CHECK(!dsi_utf8_printable("tab\there", 8));
    CHECK(!dsi_utf8_printable("del\x7f", 4));
    CHECK(!dsi_utf8_printable("csi\xc2\x9b", 5)); /* U+009B */
    CHECK(!dsi_utf8_printable("\xc2\x80", 2));    /* U+0080 */
    CHECK(!dsi_utf8_printable("a\xff", 2));
    CHECK(!dsi_utf8_printable("a\xe2\x82", 3));
    CHECK(!dsi_utf8_printable("nul\0x", 5));
    CHECK_EQ_INT(dsi_utf8_seq_len("\xe2\x82\xac", 3), 3);
    CHECK_EQ_INT(dsi_utf8_seq_len("\xe2\x82\xac", 2), 0);
    CHECK_EQ_INT(dsi_utf8_seq_len("", 0), 0);
}

/* Logs "model <arg> loaded" with stderr sent to a file; returns what was written. */
static char *log_capture(const char *arg) {
    char path[] = "/tmp/dsi_core_log.XXXXXX";
    int fd = mkstemp(path), saved = dup(STDERR_FILENO);
    if (fd < 0 || saved < 0) return NULL;
    fflush(stderr);
    dup2(fd, STDERR_FILENO);
    dsi_log_write(DSI_LOG_WARN, "test", "model %s loaded", arg);
    dup2(saved, STDERR_FILENO);
    close(saved);
    close(fd);
    char *out = NULL;
    size_t len = 0;
    if (dsi_read_file(path, 1 << 20, &out, &len, NULL) != 0) out = NULL;
    unlink(path);
    return out;
}

/* Paths, model names and other outside text reach log lines: one record stays
 * one line, terminal controls and non-UTF-8 bytes are escaped. */
TEST(log_escapes_control_bytes_and_invalid_utf8) {
    unsetenv("JOURNAL_STREAM");
    char *out = log_capture("m\x1b]0;pwned\x07\x1b[31m\xc2\x9b"
                            "2J\xff\n"
                            "2026 INFO forged Ren\xc3\xa9"
                            "e\t|");
    CHECK(out != NULL);
    if (!out) return;
    CHECK(strstr(out, "WARN test: model m\\x1b]0;pwned\\x07\\x1b[31m\\xc2\\x9b2J\\xff 2026 INFO forged "
                      "Ren\xc3\xa9"
                      "e\\x09| loaded\n") != NULL);
    CHECK(strchr(out, '\n') == out + strlen(out) - 1); /* one line */
    CHECK(dsi_utf8_printable(out, strlen(out) - 1));
    free(out);
    /* a long message of controls is cut at a whole escape and marked */
    char big[3000];
    memset(big, 0x1b, sizeof big - 1);
    big[sizeof big - 1] = 0;
    out = log_capture(big);
    CHECK(out != NULL);
    if (!out) return;
    size_t n = strlen(out);
    CHECK(n > 16 && n <= 4096 && !strcmp(out + n - 4, "...\n"));
    CHECK(strstr(out, "\\x1b\\x1b") != NULL && !strchr(out, 0x1b));
    free(out);
}

TEST(clock_now_ms_and_s_agree_and_never_go_back) {
    int64_t ms0 = dsi_now_ms();
    double s0 = dsi_now_s();
    usleep(20000);
    int64_t ms1 = dsi_now_ms();
    double s1 = dsi_now_s();
    CHECK(ms1 - ms0 >= 20 && s1 - s0 >= 0.02);
    CHECK(ms1 - ms0 < 10000);
    CHECK(fabs(s1 * 1000.0 - (double)ms1) < 5.0); /* one clock, two units */
}

TEST(write_file_atomic_replaces_with_mode_and_leaves_no_temp) {
    char dir[] = "/tmp/dsi_core_atomic.XXXXXX", path[64], *err = NULL, *got = NULL;
    CHECK(mkdtemp(dir) != NULL);
    snprintf(path, sizeof path, "%s/keys.json", dir);
    CHECK_EQ_INT(dsi_write_file_atomic(path, "old\n", 4, 0600, &err), 0);
    CHECK_EQ_INT(dsi_write_file_atomic(path, "new text\n", 9, 0640, &err), 0);
    CHECK(err == NULL);
    size_t len = 0;
    CHECK_EQ_INT(dsi_read_file(path, 100, &got, &len, &err), 0);
    CHECK_EQ_STR(got, "new text\n");
    CHECK_EQ_INT(len, 9);
    struct stat sb;
    CHECK(stat(path, &sb) == 0 && (sb.st_mode & 0777) == 0640);
    CHECK_EQ_INT(count_temps(dir), 0);
    free(got);
    unlink(path);
    rmdir(dir);
}

TEST(write_file_atomic_into_missing_folder_fails_cleanly) {
    char *err = NULL;
    CHECK_EQ_INT(dsi_write_file_atomic("/tmp/dsi-no-such-dir-zz/x.json", "x", 1, 0600, &err), DSI_EIO);
    CHECK(err && strstr(err, "/tmp/dsi-no-such-dir-zz/x.json"));
    free(err);
}

TEST(grow_doubles_only_when_full_and_refuses_overflow) {
    size_t cap = 0;
    int *a = dsi_grow(NULL, 0, &cap, sizeof *a, 4);
    CHECK(a != NULL);
    CHECK_EQ_INT((int)cap, 4);
    for (int i = 0; i < 4; i++)
        a[i] = i;
    CHECK(dsi_grow(a, 3, &cap, sizeof *a, 4) == a); /* room left: untouched */
    CHECK_EQ_INT((int)cap, 4);
    int *b = dsi_grow(a, 4, &cap, sizeof *b, 4);
    CHECK(b != NULL);
    CHECK_EQ_INT((int)cap, 8);
    for (int i = 0; i < 4; i++)
        CHECK_EQ_INT(b[i], i); /* contents kept */
    /* a count whose byte size wraps around fails and leaves the array as it was */
    size_t huge = SIZE_MAX / 2 + 1;
    CHECK(dsi_grow(b, huge, &huge, sizeof *b, 4) == NULL);
    CHECK(huge == SIZE_MAX / 2 + 1);
    size_t big = SIZE_MAX / 4; /* doubles to about SIZE_MAX / 2 elements: too many bytes */
    CHECK(dsi_grow(b, big, &big, sizeof *b, 4) == NULL);
    CHECK(big == SIZE_MAX / 4);
    free(b);
}

int main(void) {
    RUN(err_names_and_messages_come_from_one_table);
    RUN(seterr_keeps_first_message);
    RUN(log_level_parse_rejects_unknown);
    RUN(utf8_valid_accepts_only_well_formed_text);
    RUN(utf8_printable_refuses_controls_and_malformed_text);
    RUN(log_escapes_control_bytes_and_invalid_utf8);
    RUN(clock_now_ms_and_s_agree_and_never_go_back);
    RUN(write_file_atomic_replaces_with_mode_and_leaves_no_temp);
    RUN(write_file_atomic_into_missing_folder_fails_cleanly);
    RUN(grow_doubles_only_when_full_and_refuses_overflow);
    return test_summary();
}
