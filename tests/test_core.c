/* test_core.c: error table and logging. */
#include "dsinfer/err.h"
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

int main(void) {
    RUN(err_names_and_messages_come_from_one_table);
    RUN(seterr_keeps_first_message);
    RUN(log_level_parse_rejects_unknown);
    RUN(utf8_valid_accepts_only_well_formed_text);
    return test_summary();
}
