/* shardserve synth: writes a model of any shape with random weights, as GGUF
 * or as Hugging Face safetensors, so that real-size speed can be measured
 * where no weights can be downloaded and any shape can be studied.
 *
 * Values: weight matrices are uniform with standard deviation 1/sqrt(n_in)
 * (embeddings: 1), so activations stay O(1) through any depth; norm weights
 * are 1.  Row r of a tensor is drawn from its own generator, seeded from
 * (--seed, the tensor's canonical name, r): the file is the same whatever the
 * thread count, and the GGUF and safetensors files of one seed hold the same
 * weights (GGUF's Q/K rows permuted as llama.cpp's converter does for llama;
 * grok's are not), and, for grok-1, the GGUF's grok.* keys say what the
 * folder's config.json says. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "launcher/cli.h"
#include "launcher/synth.h"
#include "runtime/base/status.h"
#include "runtime/formats/gguf.h"

static const char *k_cmd = "synth";

static void usage(FILE *f) {
  fprintf(f,
          "Usage: shardserve synth [--preset NAME] [shape options] [--dtype T] -o PATH\n"
          "\n"
          "Writes a model with random weights: GGUF (PATH ending in .gguf, or --format gguf)\n"
          "or Hugging Face safetensors (a directory: config.json, model.safetensors,\n"
          "tokenizer.json, tokenizer_config.json).\n"
          "\n"
          "Shape (required unless a preset gives them; flags override the preset):\n"
          "      --preset NAME       llama-3-8b, llama-3-70b, mixtral-8x7b, grok-1, tiny\n"
          "      --arch A            llama (default), mixtral, grok-1\n"
          "      --dim N             residual width\n"
          "      --layers N          transformer blocks\n"
          "      --heads N           query heads\n"
          "      --kv-heads N        key/value heads (default: --heads)\n"
          "      --head-dim N        per head (default: dim / heads)\n"
          "      --ffn N             MLP (per expert) hidden width\n"
          "      --vocab N           vocabulary size\n"
          "      --experts N         experts per MoE layer (mixtral, grok-1; default 8)\n"
          "      --experts-used N    experts per token (default 2)\n"
          "      --ctx N             context length written to the metadata (default 4096)\n"
          "      --rope-theta X      RoPE base (default 10000)\n"
          "      --rms-eps X         RMSNorm epsilon (default 1e-5)\n"
          "      --tied              no output head: the LM head is the embedding (grok-1\n"
          "                          always)\n"
          "\n"
          "Contents:\n"
          "      --dtype T           weight matrices: f32, f16, bf16 (default), q8_0, q4_0,\n"
          "                          q4_1 (GGUF only); norms are always f32\n"
          "      --tokenizer FILE    copy the tokenizer of a vocab GGUF (e.g.\n"
          "                          tests/data/tokenizer/ggml-vocab-gpt-2.gguf) when its size\n"
          "                          equals --vocab (or --vocab is not given); otherwise a\n"
          "                          byte-level BPE vocabulary is generated\n"
          "      --seed S            random seed (default 0): same seed, same file\n"
          "  -o, --output PATH       the file (GGUF) or directory (safetensors)\n"
          "      --format F          gguf or safetensors (default: from PATH)\n"
          "  -t, --threads N         threads drawing values (default: one per core)\n"
          "  -h, --help              show this help\n"
          "\n"
          "Tensor names: GGUF as llama.cpp (llama and mixtral: arch llama with\n"
          "ffn_*_exps experts; grok-1: arch grok).  safetensors as Hugging Face: llama\n"
          "model.layers.N.{self_attn.{q,k,v,o}_proj, mlp.{gate,up,down}_proj,\n"
          "input_layernorm, post_attention_layernorm}; mixtral block_sparse_moe.gate and\n"
          "block_sparse_moe.experts.E.{w1,w2,w3}; grok-1 the Mixtral names plus four norms\n"
          "pre_attn_norm, post_attn_norm, pre_moe_norm, post_moe_norm, and no lm_head.\n");
}

/* ---- presets ------------------------------------------------------------------ */

typedef struct preset {
  const char *name;
  synth_cfg c;
} preset;

static const preset k_presets[] = {
    {"llama-3-8b", {.arch = SYNTH_LLAMA, .dim = 4096, .layers = 32, .heads = 32, .kv_heads = 8,
                    .ffn = 14336, .vocab = 128256, .ctx = 8192, .rope_theta = 500000.0f}},
    {"llama-3-70b", {.arch = SYNTH_LLAMA, .dim = 8192, .layers = 80, .heads = 64, .kv_heads = 8,
                     .ffn = 28672, .vocab = 128256, .ctx = 8192, .rope_theta = 500000.0f}},
    {"mixtral-8x7b", {.arch = SYNTH_MIXTRAL, .dim = 4096, .layers = 32, .heads = 32,
                      .kv_heads = 8, .ffn = 14336, .vocab = 32000, .experts = 8,
                      .experts_used = 2, .ctx = 32768, .rope_theta = 1e6f}},
    {"grok-1", {.arch = SYNTH_GROK1, .dim = 6144, .layers = 64, .heads = 48, .kv_heads = 8,
                .head_dim = 128, .ffn = 32768, .vocab = 131072, .experts = 8, .experts_used = 2,
                .ctx = 8192, .rope_theta = 10000.0f, .tied = true}},
    {"tiny", {.arch = SYNTH_LLAMA, .dim = 128, .layers = 2, .heads = 4, .kv_heads = 2,
              .ffn = 256, .vocab = 512, .ctx = 512, .rope_theta = 10000.0f}},
};

/* ---- values --------------------------------------------------------------------- */

static uint64_t splitmix(uint64_t *s) {
  uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

static uint64_t fnv1a(const char *s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (; *s; s++) h = (h ^ (uint8_t)*s) * 0x100000001b3ull;
  return h;
}

/* Row `row` of the tensor with canonical name `canon`: cols values. */
static void draw_row(uint64_t seed, const char *canon, int64_t row, double std, float *out,
                     int64_t cols) {
  if (std == 0.0) {
    for (int64_t i = 0; i < cols; i++) out[i] = 1.0f;
    return;
  }
  uint64_t s = seed ^ fnv1a(canon) ^ ((uint64_t)row * 0xd1b54a32d192ed03ull);
  splitmix(&s);
  const float a = (float)(std * sqrt(3.0)); /* uniform(-a, a) has std a/sqrt(3) */
  for (int64_t i = 0; i < cols; i++) {
    const float u = (float)(splitmix(&s) >> 40) * (1.0f / 16777216.0f); /* [0, 1) */
    out[i] = (2.0f * u - 1.0f) * a;
  }
}

/* ---- the tensor table -------------------------------------------------------------- */

typedef struct table {
  synth_tensor *t;
  int n, cap;
} table;

static synth_tensor *add(table *tb, const char *name, const char *canon, int n_dims, int64_t ne0,
                         int64_t ne1, int64_t ne2, ss_dtype type, double std) {
  if (tb->n == tb->cap) {
    tb->cap = tb->cap ? 2 * tb->cap : 64;
    synth_tensor *nt = realloc(tb->t, (size_t)tb->cap * sizeof *nt);
    if (!nt) return NULL;
    tb->t = nt;
  }
  synth_tensor *t = &tb->t[tb->n++];
  memset(t, 0, sizeof *t);
  snprintf(t->name, sizeof t->name, "%s", name);
  snprintf(t->canon, sizeof t->canon, "%s", canon);
  t->n_dims = n_dims;
  t->ne[0] = ne0, t->ne[1] = ne1, t->ne[2] = ne2;
  t->type = type;
  t->std = std;
  const ss_dtype_info *ti = ss_dtype_get(type);
  t->nbytes = (uint64_t)(ne0 / ti->block_count) * ti->block_nbytes * (uint64_t)ne1 * (uint64_t)ne2;
  return t;
}

/* Every tensor of the model, in file order.  Canonical names: "embed",
 * "head", "norm", "L<l>.<what>", "L<l>.e%d.<what>" for experts. */
static int build_table(const synth_cfg *c, bool hf, table *tb) {
  const ss_dtype T = c->dtype, F32 = SS_DTYPE_F32;
  const int64_t C = c->dim, V = c->vocab, HD = (int64_t)c->heads * c->head_dim,
                KD = (int64_t)c->kv_heads * c->head_dim, F = c->ffn, E = c->experts;
  const double sC = 1.0 / sqrt((double)C), sHD = 1.0 / sqrt((double)HD), sF = 1.0 / sqrt((double)F);
  const bool moe = c->arch != SYNTH_LLAMA, grok = c->arch == SYNTH_GROK1;
  char n[112], cn[64];
  bool ok = true;
#define ADD(name, canon, nd, a, b, e, type, std) ok = ok && add(tb, name, canon, nd, a, b, e, type, std)
  ADD(hf ? "model.embed_tokens.weight" : "token_embd.weight", "embed", 2, C, V, 1, T, 1.0);
  for (int l = 0; l < c->layers && ok; l++) {
    const char *p = hf ? "model.layers" : "blk";
#define NM(hfs, gs) (snprintf(n, sizeof n, "%s.%d.%s", p, l, hf ? (hfs) : (gs)), n)
#define CN(s) (snprintf(cn, sizeof cn, "L%d.%s", l, s), cn)
    ADD(NM(grok ? "pre_attn_norm.weight" : "input_layernorm.weight", "attn_norm.weight"),
        CN("attn_norm"), 1, C, 1, 1, F32, 0.0);
    /* llama.cpp's converter permutes Q/K rows for llama, not for grok (NEOX RoPE). */
    ADD(NM("self_attn.q_proj.weight", "attn_q.weight"), CN("wq"), 2, C, HD, 1, T, sC);
    if (ok && !hf && !grok) tb->t[tb->n - 1].perm_heads = c->heads;
    ADD(NM("self_attn.k_proj.weight", "attn_k.weight"), CN("wk"), 2, C, KD, 1, T, sC);
    if (ok && !hf && !grok) tb->t[tb->n - 1].perm_heads = c->kv_heads;
    ADD(NM("self_attn.v_proj.weight", "attn_v.weight"), CN("wv"), 2, C, KD, 1, T, sC);
    ADD(NM("self_attn.o_proj.weight", "attn_output.weight"), CN("wo"), 2, HD, C, 1, T, sHD);
    if (grok)
      ADD(NM("post_attn_norm.weight", "attn_output_norm.weight"), CN("post_attn_norm"), 1, C, 1,
          1, F32, 0.0);
    ADD(NM(grok ? "pre_moe_norm.weight" : "post_attention_layernorm.weight", "ffn_norm.weight"),
        CN("ffn_norm"), 1, C, 1, 1, F32, 0.0);
    if (!moe) {
      ADD(NM("mlp.gate_proj.weight", "ffn_gate.weight"), CN("w_gate"), 2, C, F, 1, T, sC);
      ADD(NM("mlp.up_proj.weight", "ffn_up.weight"), CN("w_up"), 2, C, F, 1, T, sC);
      ADD(NM("mlp.down_proj.weight", "ffn_down.weight"), CN("w_down"), 2, F, C, 1, T, sF);
    } else {
      ADD(NM("block_sparse_moe.gate.weight", "ffn_gate_inp.weight"), CN("router"), 2, C, E, 1,
          F32, sC);
      if (!hf) {
        /* llama.cpp stacks experts: [C, F, E] for gate/up, [F, C, E] for down. */
        ADD(NM("", "ffn_gate_exps.weight"), CN("e%d.w1"), 3, C, F, E, T, sC);
        ADD(NM("", "ffn_down_exps.weight"), CN("e%d.w2"), 3, F, C, E, T, sF);
        ADD(NM("", "ffn_up_exps.weight"), CN("e%d.w3"), 3, C, F, E, T, sC);
      } else {
        for (int e = 0; e < E && ok; e++) {
          char hn[64], cc[32];
          static const char *w[3] = {"w1", "w2", "w3"};
          for (int k = 0; k < 3; k++) {
            snprintf(hn, sizeof hn, "block_sparse_moe.experts.%d.%s.weight", e, w[k]);
            snprintf(cc, sizeof cc, "e%d.%s", e, w[k]);
            const bool down = k == 1;
            ADD(NM(hn, ""), CN(cc), 2, down ? F : C, down ? C : F, 1, T, down ? sF : sC);
          }
        }
      }
    }
    if (grok)
      ADD(NM("post_moe_norm.weight", "layer_output_norm.weight"), CN("post_moe_norm"), 1, C, 1,
          1, F32, 0.0);
#undef NM
#undef CN
  }
  ADD(hf ? "model.norm.weight" : "output_norm.weight", "norm", 1, C, 1, 1, F32, 0.0);
  if (!c->tied) ADD(hf ? "lm_head.weight" : "output.weight", "head", 2, C, V, 1, T, sC);
#undef ADD
  return ok ? SS_OK : ss_error(SS_ERR_NOMEM, "out of memory");
}

/* ---- filling the file in parallel ------------------------------------------------------ */

#define ROWS_PER_ITEM 64

typedef struct fill_job {
  const synth_cfg *c;
  synth_tensor *t;
  int n;
  int fd;
  const char *path;
  uint64_t data_start;
  int64_t *item_first; /* per tensor: first work item */
  int64_t n_items;
  int64_t next;        /* atomic */
  int rc;              /* atomic: first failure */
} fill_job;

/* Canonical row of GGUF row r of a rotary tensor: llama.cpp's converter
 * stores HF row h*D + j*D/2 + i at h*D + 2*i + j. */
static int64_t perm_row(int64_t r, int64_t head_dim) {
  const int64_t h = r / head_dim, k = r % head_dim, i = k / 2, j = k % 2;
  return h * head_dim + j * (head_dim / 2) + i;
}

static void *fill_worker(void *arg) {
  fill_job *j = arg;
  float *row = NULL;
  uint8_t *buf = NULL;
  size_t row_cap = 0, buf_cap = 0;
  for (;;) {
    const int64_t item = __atomic_fetch_add(&j->next, 1, __ATOMIC_RELAXED);
    if (item >= j->n_items || __atomic_load_n(&j->rc, __ATOMIC_RELAXED)) break;
    int ti = 0;
    while (ti + 1 < j->n && j->item_first[ti + 1] <= item) ti++;
    synth_tensor *t = &j->t[ti];
    const int64_t cols = t->ne[0], rows = t->ne[1] * t->ne[2];
    const int64_t r0 = (item - j->item_first[ti]) * ROWS_PER_ITEM;
    const int64_t r1 = r0 + ROWS_PER_ITEM < rows ? r0 + ROWS_PER_ITEM : rows;
    const size_t row_nbytes = (size_t)(t->nbytes / (uint64_t)rows);
    if ((size_t)cols > row_cap) {
      free(row);
      row = malloc((size_t)cols * sizeof *row);
      row_cap = row ? (size_t)cols : 0;
    }
    if ((size_t)(r1 - r0) * row_nbytes > buf_cap) {
      free(buf);
      buf_cap = (size_t)(r1 - r0) * row_nbytes;
      buf = malloc(buf_cap);
    }
    if (!row || !buf) {
      int zero = 0;
      __atomic_compare_exchange_n(&j->rc, &zero, SS_ERR_NOMEM, false, __ATOMIC_RELAXED,
                                  __ATOMIC_RELAXED);
      break;
    }
    for (int64_t r = r0; r < r1; r++) {
      char canon[80];
      int64_t cr = r % t->ne[1];
      snprintf(canon, sizeof canon, t->canon, (int)(r / t->ne[1]));
      if (t->perm_heads > 0) cr = perm_row(cr, t->ne[1] / t->perm_heads);
      draw_row(j->c->seed, canon, cr, t->std, row, cols);
      ss_quantize_row(t->type, row, buf + (size_t)(r - r0) * row_nbytes, cols);
    }
    const uint64_t off = j->data_start + t->offset + (uint64_t)r0 * row_nbytes;
    size_t left = (size_t)(r1 - r0) * row_nbytes;
    const uint8_t *p = buf;
    uint64_t o = off;
    while (left) {
      ssize_t w = pwrite(j->fd, p, left, (off_t)o);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) {
        int zero = 0;
        __atomic_compare_exchange_n(&j->rc, &zero, SS_ERR_IO, false, __ATOMIC_RELAXED,
                                    __ATOMIC_RELAXED);
        break;
      }
      p += w, left -= (size_t)w, o += (uint64_t)w;
    }
  }
  free(row);
  free(buf);
  return NULL;
}

static int write_model(const synth_cfg *c, const synth_vocab *v, bool hf, const char *out,
                       int threads) {
  table tb = {0};
  int rc = build_table(c, hf, &tb);
  char path[4096];
  if (hf) {
    if (mkdir(out, 0777) != 0 && errno != EEXIST) {
      free(tb.t);
      return ss_error(SS_ERR_IO, "%s: cannot create the directory: %s", out, strerror(errno));
    }
    snprintf(path, sizeof path, "%s/model.safetensors", out);
  } else {
    snprintf(path, sizeof path, "%s", out);
  }
  int fd = rc ? -1 : open(path, O_CREAT | O_TRUNC | O_WRONLY, 0644);
  if (!rc && fd < 0) rc = ss_error(SS_ERR_IO, "%s: cannot create: %s", path, strerror(errno));
  uint64_t data_start = 0, total = 0;
  if (!rc)
    rc = hf ? synth_safetensors_header(fd, path, tb.t, tb.n, &data_start, &total)
            : synth_gguf_header(fd, path, c, v, tb.t, tb.n, &data_start, &total);
  if (!rc && ftruncate(fd, (off_t)total) != 0)
    rc = ss_error(SS_ERR_IO, "%s: cannot size the file to %" PRIu64 " bytes: %s", path, total,
                  strerror(errno));
  int64_t *first = rc ? NULL : malloc(((size_t)tb.n + 1) * sizeof *first);
  if (!rc && !first) rc = ss_error(SS_ERR_NOMEM, "out of memory");
  if (!rc) {
    int64_t k = 0;
    for (int i = 0; i < tb.n; i++) {
      first[i] = k;
      k += (tb.t[i].ne[1] * tb.t[i].ne[2] + ROWS_PER_ITEM - 1) / ROWS_PER_ITEM;
    }
    first[tb.n] = k;
    fill_job job = {.c = c, .t = tb.t, .n = tb.n, .fd = fd, .path = path,
                    .data_start = data_start, .item_first = first, .n_items = k};
    pthread_t *th = malloc((size_t)threads * sizeof *th);
    int started = 0;
    for (int i = 0; th && i < threads; i++)
      if (pthread_create(&th[i], NULL, fill_worker, &job) == 0) started++;
    if (!started) fill_worker(&job);
    for (int i = 0; i < started; i++) pthread_join(th[i], NULL);
    free(th);
    if (job.rc) rc = ss_error(job.rc, "%s: writing the weights failed (%s)", path,
                              job.rc == SS_ERR_IO ? strerror(errno) : "out of memory");
  }
  free(first);
  if (fd >= 0 && close(fd) != 0 && !rc)
    rc = ss_error(SS_ERR_IO, "%s: close failed: %s", path, strerror(errno));
  if (!rc && hf) rc = synth_hf_config(out, c, v);
  if (!rc && hf) rc = synth_hf_tokenizer(out, v);
  if (!rc)
    fprintf(stderr, "synth: wrote %s: %d tensors, %.2f GiB\n", path, tb.n,
            (double)total / (1 << 30));
  free(tb.t);
  return rc;
}

/* ---- the command --------------------------------------------------------------------------- */

static bool parse_dtype(const char *s, ss_dtype *out) {
  static const struct { const char *n; ss_dtype t; } k[] = {
      {"f32", SS_DTYPE_F32}, {"f16", SS_DTYPE_F16}, {"bf16", SS_DTYPE_BF16},
      {"q8_0", SS_DTYPE_Q8_0}, {"q4_0", SS_DTYPE_Q4_0}, {"q4_1", SS_DTYPE_Q4_1}};
  for (size_t i = 0; i < sizeof k / sizeof *k; i++)
    if (strcasecmp(s, k[i].n) == 0) {
      *out = k[i].t;
      return true;
    }
  return false;
}

int ss_cmd_synth(int argc, char **argv) {
  synth_cfg c = {.arch = SYNTH_LLAMA, .ctx = 4096, .rope_theta = 10000.0f, .rms_eps = 1e-5f,
                 .dtype = SS_DTYPE_BF16, .experts = 8, .experts_used = 2};
  int64_t dim = -1, layers = -1, heads = -1, kv = -1, hd = -1, ffn = -1, vocab = -1, ex = -1,
          exu = -1, ctx = -1, seed = 0, threads = 0;
  double theta = -1, eps = -1;
  const char *out = NULL, *format = NULL, *tok_path = NULL, *arch = NULL, *preset_name = NULL;
  bool tied = false;
  enum { O_PRESET = 256, O_ARCH, O_DIM, O_LAYERS, O_HEADS, O_KV, O_HD, O_FFN, O_VOCAB, O_EX,
         O_EXU, O_CTX, O_THETA, O_EPS, O_TIED, O_DTYPE, O_TOK, O_SEED, O_FORMAT };
  static const struct option opts[] = {
      {"preset", required_argument, 0, O_PRESET}, {"arch", required_argument, 0, O_ARCH},
      {"dim", required_argument, 0, O_DIM},       {"layers", required_argument, 0, O_LAYERS},
      {"heads", required_argument, 0, O_HEADS},   {"kv-heads", required_argument, 0, O_KV},
      {"head-dim", required_argument, 0, O_HD},   {"ffn", required_argument, 0, O_FFN},
      {"vocab", required_argument, 0, O_VOCAB},   {"experts", required_argument, 0, O_EX},
      {"experts-used", required_argument, 0, O_EXU}, {"ctx", required_argument, 0, O_CTX},
      {"rope-theta", required_argument, 0, O_THETA}, {"rms-eps", required_argument, 0, O_EPS},
      {"tied", no_argument, 0, O_TIED},           {"dtype", required_argument, 0, O_DTYPE},
      {"tokenizer", required_argument, 0, O_TOK}, {"seed", required_argument, 0, O_SEED},
      {"output", required_argument, 0, 'o'},      {"format", required_argument, 0, O_FORMAT},
      {"threads", required_argument, 0, 't'},     {"help", no_argument, 0, 'h'},
      {0, 0, 0, 0},
  };
  optind = 1;
  opterr = 0;
  int o;
#define INT(flag, var, lo, hi)                                                          \
  if (!ss_cli_parse_int(k_cmd, flag, optarg, lo, hi, &var)) return SS_EXIT_USAGE; \
  break
  while ((o = getopt_long(argc, argv, ":o:t:h", opts, NULL)) != -1) {
    switch (o) {
    case O_PRESET: preset_name = optarg; break;
    case O_ARCH: arch = optarg; break;
    case O_DIM: INT("--dim", dim, 1, 1 << 20);
    case O_LAYERS: INT("--layers", layers, 1, 4096);
    case O_HEADS: INT("--heads", heads, 1, 4096);
    case O_KV: INT("--kv-heads", kv, 1, 4096);
    case O_HD: INT("--head-dim", hd, 2, 4096);
    case O_FFN: INT("--ffn", ffn, 1, 1 << 22);
    case O_VOCAB: INT("--vocab", vocab, 1, INT32_MAX);
    case O_EX: INT("--experts", ex, 1, 1024);
    case O_EXU: INT("--experts-used", exu, 1, 1024);
    case O_CTX: INT("--ctx", ctx, 1, 1 << 24);
    case O_SEED: INT("--seed", seed, 0, INT64_MAX);
    case 't': INT("--threads", threads, 1, 1024);
    case O_THETA:
      if (!ss_cli_parse_float(k_cmd, "--rope-theta", optarg, 1.0, 1e12, &theta)) return SS_EXIT_USAGE;
      break;
    case O_EPS:
      if (!ss_cli_parse_float(k_cmd, "--rms-eps", optarg, 1e-12, 1.0, &eps)) return SS_EXIT_USAGE;
      break;
    case O_TIED: tied = true; break;
    case O_DTYPE:
      if (!parse_dtype(optarg, &c.dtype))
        return ss_cli_usage(k_cmd, "--dtype must be f32, f16, bf16, q8_0, q4_0 or q4_1 (got '%s')",
                            optarg);
      break;
    case O_TOK: tok_path = optarg; break;
    case 'o': out = optarg; break;
    case O_FORMAT: format = optarg; break;
    case 'h': usage(stdout); return SS_EXIT_OK;
    case ':': return ss_cli_usage(k_cmd, "option '%s' needs a value", argv[optind - 1]);
    default: return ss_cli_usage(k_cmd, "unknown option '%s'", argv[optind - 1]);
    }
  }
#undef INT
  if (optind < argc) return ss_cli_usage(k_cmd, "unexpected argument '%s'", argv[optind]);
  if (!out) return ss_cli_usage(k_cmd, "-o PATH is required");
  if (preset_name) {
    size_t i = 0, np = sizeof k_presets / sizeof *k_presets;
    while (i < np && strcmp(k_presets[i].name, preset_name) != 0) i++;
    if (i == np)
      return ss_cli_usage(k_cmd, "--preset must be llama-3-8b, llama-3-70b, mixtral-8x7b, "
                          "grok-1 or tiny (got '%s')", preset_name);
    const synth_cfg *p = &k_presets[i].c;
    c.arch = p->arch, c.dim = p->dim, c.layers = p->layers, c.heads = p->heads;
    c.kv_heads = p->kv_heads, c.head_dim = p->head_dim, c.ffn = p->ffn, c.vocab = p->vocab;
    c.ctx = p->ctx, c.rope_theta = p->rope_theta, c.tied = p->tied;
    if (p->experts) c.experts = p->experts, c.experts_used = p->experts_used;
  }
  if (arch) {
    if (strcmp(arch, "llama") == 0) c.arch = SYNTH_LLAMA;
    else if (strcmp(arch, "mixtral") == 0) c.arch = SYNTH_MIXTRAL;
    else if (strcmp(arch, "grok-1") == 0 || strcmp(arch, "grok") == 0) c.arch = SYNTH_GROK1;
    else return ss_cli_usage(k_cmd, "--arch must be llama, mixtral or grok-1 (got '%s')", arch);
  }
  if (dim > 0) c.dim = (int)dim;
  if (layers > 0) c.layers = (int)layers;
  if (heads > 0) c.heads = (int)heads;
  if (kv > 0) c.kv_heads = (int)kv;
  if (hd > 0) c.head_dim = (int)hd;
  if (ffn > 0) c.ffn = (int)ffn;
  if (ex > 0) c.experts = (int)ex;
  if (exu > 0) c.experts_used = (int)exu;
  if (ctx > 0) c.ctx = (int)ctx;
  if (theta > 0) c.rope_theta = (float)theta;
  if (eps > 0) c.rms_eps = (float)eps;
  if (tied || c.arch == SYNTH_GROK1) c.tied = true; /* Grok-1 ties its embeddings */
  c.seed = (uint64_t)seed;
  const char *missing = !c.dim ? "--dim" : !c.layers ? "--layers" : !c.heads ? "--heads"
                        : !c.ffn ? "--ffn" : NULL;
  if (missing) return ss_cli_usage(k_cmd, "%s is required (or a --preset)", missing);
  if (!c.kv_heads) c.kv_heads = c.heads;
  if (c.heads % c.kv_heads != 0)
    return ss_cli_usage(k_cmd, "--heads %d must be a multiple of --kv-heads %d", c.heads, c.kv_heads);
  if (!c.head_dim) {
    if (c.dim % c.heads != 0)
      return ss_cli_usage(k_cmd, "--dim %d is not a multiple of --heads %d: give --head-dim",
                          c.dim, c.heads);
    c.head_dim = c.dim / c.heads;
  }
  if (c.head_dim % 2 != 0) return ss_cli_usage(k_cmd, "--head-dim %d must be even", c.head_dim);
  if (c.arch != SYNTH_LLAMA && c.experts_used > c.experts)
    return ss_cli_usage(k_cmd, "--experts-used %d exceeds --experts %d", c.experts_used, c.experts);
  const ss_dtype_info *ti = ss_dtype_get(c.dtype);
  if (ti->block_count > 1 &&
      (c.dim % 32 || ((int64_t)c.heads * c.head_dim) % 32 || c.ffn % 32))
    return ss_cli_usage(k_cmd, "--dtype %s packs rows in blocks of 32: --dim, --ffn and heads x "
                        "head-dim must be multiples of 32", ti->name);
  size_t ol = strlen(out);
  bool hf = format ? strcmp(format, "safetensors") == 0 : !(ol > 5 && strcmp(out + ol - 5, ".gguf") == 0);
  if (format && !hf && strcmp(format, "gguf") != 0)
    return ss_cli_usage(k_cmd, "--format must be gguf or safetensors (got '%s')", format);
  if (hf && ti->block_count > 1)
    return ss_cli_usage(k_cmd, "--dtype %s exists only in GGUF: safetensors takes f32, f16 or bf16",
                        ti->name);
  if (threads <= 0) {
    long nc = sysconf(_SC_NPROCESSORS_ONLN);
    threads = nc > 0 ? nc : 1;
  }

  /* The vocabulary: the given file's when sizes agree, else generated. */
  ss_gguf *tg = NULL;
  synth_vocab v = {0};
  int rc = SS_OK;
  if (tok_path) {
    if (ss_gguf_open(tok_path, &tg)) return ss_cli_fail(k_cmd, "--tokenizer: %s", ss_error_msg());
    const ss_gguf_value *toks;
    if (ss_gguf_get_arr(tg, "tokenizer.ggml.tokens", true, SS_GGUF_STRING, &toks)) {
      ss_gguf_close(tg);
      return ss_cli_fail(k_cmd, "--tokenizer: %s", ss_error_msg());
    }
    if (vocab < 0) vocab = (int64_t)toks->arr.count;
    if ((uint64_t)vocab == toks->arr.count) rc = synth_vocab_from_gguf(tg, &v);
    else
      fprintf(stderr, "synth: --vocab %" PRId64 " differs from the %" PRIu64 " tokens of %s: "
              "writing a generated byte-level vocabulary\n", vocab, toks->arr.count, tok_path);
  }
  if (vocab > 0) c.vocab = (int)vocab;
  if (!c.vocab) {
    ss_gguf_close(tg);
    return ss_cli_usage(k_cmd, "--vocab is required (or a --preset, or --tokenizer FILE)");
  }
  if (!rc && !v.tok) {
    rc = synth_vocab_generate(c.vocab, &v);
    if (rc == SS_ERR_INVALID) {
      ss_gguf_close(tg);
      return ss_cli_usage(k_cmd, "%s", ss_error_msg());
    }
  }
  if (!rc) rc = write_model(&c, &v, hf, out, (int)threads);
  synth_vocab_free(&v);
  ss_gguf_close(tg);
  return rc ? ss_cli_fail(k_cmd, "%s", ss_error_msg()) : SS_EXIT_OK;
}
