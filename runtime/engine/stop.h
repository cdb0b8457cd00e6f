/* Stop strings over a text stream: how much generated text can be shown while
 * a stop string may still be forming, and where the text ends when one appears. */
#ifndef SS_STOP_H
#define SS_STOP_H

#include <stdbool.h>
#include <stddef.h>

/* How many bytes of `text` (len bytes, of which the first `emitted` were
 * already shown) can be shown now, and whether a stop string was found (then
 * *cut is where the text ends, and the return value equals it).  A tail that
 * is a proper prefix of a stop string is held back. */
size_t ss_stop_scan(const char *text, size_t len, size_t emitted, const char *const *stop,
                    size_t n_stop, bool *found, size_t *cut);

#endif
