/* Stop-string matching over a streamed text (runtime/engine/stop.h): used by
 * the engine for every request's stop strings. */
#include "runtime/engine/stop.h"

#include <string.h>

size_t ss_stop_scan(const char *text, size_t len, size_t emitted, const char *const *stop,
                    size_t n_stop, bool *found, size_t *cut) {
  *found = false;
  size_t best = len;
  /* A full match anywhere in the text not yet shown (a match may start inside the
   * held-back tail, which is never before `emitted`). */
  for (size_t i = 0; i < n_stop; i++) {
    size_t sl = strlen(stop[i]);
    if (sl == 0 || sl > len) continue;
    size_t from = emitted >= sl ? emitted - sl + 1 : 0;
    for (size_t at = from; at + sl <= len; at++)
      if (memcmp(text + at, stop[i], sl) == 0) {
        if (at < best) best = at;
        *found = true;
        break;
      }
  }
  if (*found) {
    *cut = best;
    return best;
  }
  /* Hold back the longest tail that is a proper prefix of some stop string. */
  size_t show = len;
  for (size_t i = 0; i < n_stop; i++) {
    size_t sl = strlen(stop[i]);
    for (size_t k = sl - (sl > 0); k > 0; k--) {
      if (k > len) continue;
      if (memcmp(text + len - k, stop[i], k) == 0) {
        if (len - k < show) show = len - k;
        break;
      }
    }
  }
  return show < emitted ? emitted : show;
}
