# The layers of shardserve, bottom to top: the folders each one holds and the
# layers it may use directly (what those use, it may use too).  This file is
# the one place these edges are stated: CMakeLists.txt links each layer's
# static library to exactly these, and check_layers.cmake fails the build when
# a file includes a header from a layer outside them.  README "Layout" draws it.
set(SS_LAYERS base kernels comm formats tokenizer grammar model engine server planner
              loadgen launcher benchtools tests)

set(SS_LAYER_DIRS_base runtime/base)            # status, clock, strings, utf8, rng, stats, tensor types, trace
set(SS_LAYER_DEPS_base)
set(SS_LAYER_DIRS_kernels kernels kernels/cpu kernels/cuda)  # CPU and CUDA backends
set(SS_LAYER_DEPS_kernels base)
set(SS_LAYER_DIRS_comm comm)                    # all-reduce, broadcast: self, MPI, NCCL
set(SS_LAYER_DEPS_comm base)
set(SS_LAYER_DIRS_formats runtime/formats)      # GGUF, safetensors
set(SS_LAYER_DEPS_formats base)
set(SS_LAYER_DIRS_tokenizer runtime/tokenizer)  # tokenizers, chat templates
set(SS_LAYER_DEPS_tokenizer formats)
set(SS_LAYER_DIRS_grammar runtime/grammar)      # grammars (GBNF, regex, choice), matcher, token masks
set(SS_LAYER_DEPS_grammar tokenizer)
set(SS_LAYER_DIRS_model runtime/model)          # config, loading, sharding, forward, KV storage
set(SS_LAYER_DEPS_model tokenizer formats kernels comm)
set(SS_LAYER_DIRS_engine runtime/engine)        # scheduler, executor, sampler, output, engine loop
set(SS_LAYER_DEPS_engine model grammar)
set(SS_LAYER_DIRS_server runtime/server)        # HTTP, OpenAI protocol, routes
set(SS_LAYER_DEPS_server engine)
set(SS_LAYER_DIRS_planner runtime/planner)      # cost model, simulation, arrivals
set(SS_LAYER_DEPS_planner engine)
set(SS_LAYER_DIRS_loadgen bench/loadgen)        # the load generator's client
set(SS_LAYER_DEPS_loadgen planner)
set(SS_LAYER_DIRS_launcher launcher)            # the shardserve command
set(SS_LAYER_DEPS_launcher server planner loadgen)
set(SS_LAYER_DIRS_benchtools bench)             # benchmark programs
set(SS_LAYER_DEPS_benchtools server planner)
set(SS_LAYER_DIRS_tests tests/unit tests/comm tests/gpu)
set(SS_LAYER_DEPS_tests launcher)
