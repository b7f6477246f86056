/*
 * fileio.h: whole-file reads with a size bound.
 */
#ifndef DSINFER_FILEIO_H
#define DSINFER_FILEIO_H

#include <stddef.h>

/* Reads the regular file at path (at most max_bytes) into a new NUL-terminated
 * buffer *out (the caller frees it); *len gets its size when len != NULL.
 * DSI_ENOENT / DSI_EIO when it cannot be opened or read or is not a regular file,
 * DSI_ERANGE when larger than max_bytes, DSI_ENOMEM; *err names the path. */
int dsi_read_file(const char *path, size_t max_bytes, char **out, size_t *len, char **err);

#endif
