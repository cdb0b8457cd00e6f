/* Output constraints of a generation request: a JSON Schema compiled for the
 * engine.  The engine has no constrained decoding yet, so every constraint is
 * refused with the field that asked for it (never silently ignored). */
#include "runtime/server/api_internal.h"

bool ss_oai_constrain_schema(const gen_ctx *x, gen_fields *g, json_t *schema, const char *param,
                             parse_err *e) {
  (void)x;
  (void)g;
  (void)schema;
  return ss_oai_fail(e, 400, param,
                     "'%s' asks for constrained output, which this server does not implement",
                     param);
}
