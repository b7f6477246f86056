/*
 * fileio.h: whole-file reads with a size bound, and atomic, durable whole-file
 * replacement.
 */
#ifndef DSINFER_FILEIO_H
#define DSINFER_FILEIO_H

#include <stddef.h>
#include <stdint.h>

/* Opens the regular file at path read-only (close-on-exec): *fd and its size in
 * *size_bytes. DSI_ENOENT / DSI_EIO when it cannot be opened or is not a regular
 * file (nothing is left open); *err names the path. */
int dsi_open_regular(const char *path, int *fd, uint64_t *size_bytes, char **err);

/* Reads the regular file at path (at most max_bytes) into a new NUL-terminated
 * buffer *out (the caller frees it); *len gets its size when len != NULL.
 * DSI_ENOENT / DSI_EIO when it cannot be opened or read or is not a regular file,
 * DSI_ERANGE when larger than max_bytes, DSI_ENOMEM; *err names the path. */
int dsi_read_file(const char *path, size_t max_bytes, char **out, size_t *len, char **err);

/* Replaces the file at path with data[0..len), all or nothing, also across a
 * crash: writes a hidden temporary ".<name>.tmp.XXXXXX" in the same directory
 * (so rename(2) stays on one filesystem), with `mode`, fsyncs it, renames it over
 * path, then fsyncs the directory so that the rename itself is on disk. Returns
 * 0, DSI_ENOMEM, or DSI_EIO with *err saying whether path was left unchanged
 * (the temporary is removed) or replaced without the directory sync. */
int dsi_write_file_atomic(const char *path, const void *data, size_t len, unsigned mode, char **err);

#endif
