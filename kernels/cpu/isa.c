#include "kernels/cpu/isa.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/base/status.h"

#if defined(__aarch64__)
#include <sys/auxv.h>
#ifndef HWCAP_ASIMD
#define HWCAP_ASIMD (1 << 1)
#endif
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1 << 20)
#endif
#endif

static const char *const k_names[SS_ISA_COUNT_] = {"portable", "avx2", "avx512", "neon"};

const char *ss_cpu_isa_name(ss_cpu_isa isa) {
  return (unsigned)isa < SS_ISA_COUNT_ ? k_names[isa] : "unknown";
}

static const ss_cpu_kernels *table(ss_cpu_isa isa) {
  switch (isa) {
  case SS_ISA_PORTABLE: return &ss_cpu_kernels_portable;
#if defined(__x86_64__)
  case SS_ISA_AVX2: return &ss_cpu_kernels_avx2;
  case SS_ISA_AVX512: return &ss_cpu_kernels_avx512;
#endif
#if defined(__aarch64__)
  case SS_ISA_NEON: return &ss_cpu_kernels_neon;
#endif
  default: return NULL;
  }
}

bool ss_cpu_isa_available(ss_cpu_isa isa) {
  if (!table(isa)) return false;
#if defined(__x86_64__)
  __builtin_cpu_init();
  /* __builtin_cpu_supports also checks that the OS saves the wider registers. */
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                    __builtin_cpu_supports("f16c");
  if (isa == SS_ISA_AVX2) return avx2;
  if (isa == SS_ISA_AVX512) return avx2 && __builtin_cpu_supports("avx512f");
#endif
#if defined(__aarch64__)
  if (isa == SS_ISA_NEON) return (getauxval(AT_HWCAP) & HWCAP_ASIMD) != 0;
#endif
  return isa == SS_ISA_PORTABLE;
}

ss_cpu_isa ss_cpu_isa_best(void) {
  static const ss_cpu_isa order[] = {SS_ISA_AVX512, SS_ISA_AVX2, SS_ISA_NEON, SS_ISA_PORTABLE};
  for (size_t i = 0; i < sizeof order / sizeof order[0]; i++)
    if (ss_cpu_isa_available(order[i])) return order[i];
  return SS_ISA_PORTABLE;
}

static void available_list(char *buf, size_t cap) {
  buf[0] = '\0';
  for (int i = 0; i < SS_ISA_COUNT_; i++)
    if (ss_cpu_isa_available((ss_cpu_isa)i)) {
      size_t len = strlen(buf);
      snprintf(buf + len, cap - len, "%s%s", len ? ", " : "", k_names[i]);
    }
}

int ss_cpu_isa_select(const ss_cpu_kernels **out) {
  const char *want = getenv("SS_CPU_ISA");
  if (!want || !*want || strcmp(want, "auto") == 0) {
    *out = table(ss_cpu_isa_best());
    return SS_OK;
  }
  char avail[128];
  available_list(avail, sizeof avail);
  for (int i = 0; i < SS_ISA_COUNT_; i++) {
    if (strcmp(want, k_names[i]) != 0) continue;
    if (!ss_cpu_isa_available((ss_cpu_isa)i))
      return ss_error(SS_ERR_UNSUPPORTED, "SS_CPU_ISA=%s: this %s cannot run it (available: %s)",
                      want, table((ss_cpu_isa)i) ? "CPU" : "binary", avail);
    *out = table((ss_cpu_isa)i);
    return SS_OK;
  }
  return ss_error(SS_ERR_INVALID, "SS_CPU_ISA=%s: unknown (known: auto, avx512, avx2, neon, "
                  "portable; available here: %s)", want, avail);
}

void ss_cpu_features(char *buf, int cap) {
  buf[0] = '\0';
  int len = 0;
#define FEAT(cond, name)                                                                          \
  if ((cond) && len < cap) len += snprintf(buf + len, (size_t)(cap - len), "%s%s", len ? " " : "", name)
#if defined(__x86_64__)
  __builtin_cpu_init();
  FEAT(__builtin_cpu_supports("sse4.2"), "sse4.2");
  FEAT(__builtin_cpu_supports("avx"), "avx");
  FEAT(__builtin_cpu_supports("avx2"), "avx2");
  FEAT(__builtin_cpu_supports("fma"), "fma");
  FEAT(__builtin_cpu_supports("f16c"), "f16c");
  FEAT(__builtin_cpu_supports("avx512f"), "avx512f");
  FEAT(__builtin_cpu_supports("avx512bw"), "avx512bw");
  FEAT(__builtin_cpu_supports("avx512vnni"), "avx512vnni");
  FEAT(__builtin_cpu_supports("avx512bf16"), "avx512bf16");
#elif defined(__aarch64__)
  unsigned long hw = getauxval(AT_HWCAP);
  FEAT(hw & HWCAP_ASIMD, "asimd");
  FEAT(hw & HWCAP_ASIMDDP, "asimddp");
#endif
#undef FEAT
  if (len == 0) snprintf(buf, (size_t)cap, "(none detected)");
}
