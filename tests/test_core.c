/* test_core.c: error table and logging. */
#include "dsinfer/err.h"
#include "dsinfer/log.h"
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

int main(void) {
    RUN(err_names_and_messages_come_from_one_table);
    RUN(seterr_keeps_first_message);
    RUN(log_level_parse_rejects_unknown);
    return test_summary();
}
