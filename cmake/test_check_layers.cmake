# cmake -DSS_ROOT=<source root> -DSS_SCRATCH=<empty dir> -P test_check_layers.cmake
#
# The layer check must pass on the tree as it is and fail on a copy of it with
# one wrong-way include planted: a lower layer's file including a higher
# layer's header, kernels including comm, a header named by a relative path.
cmake_minimum_required(VERSION 3.20)
include(${SS_ROOT}/cmake/layers.cmake)

function(run_check root expect_ok what)
  execute_process(COMMAND ${CMAKE_COMMAND} -DSS_ROOT=${root} -P ${SS_ROOT}/cmake/check_layers.cmake
                  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(expect_ok AND NOT rc EQUAL 0)
    message(FATAL_ERROR "FAIL ${what}: the check rejected the tree:\n${err}")
  elseif(NOT expect_ok AND rc EQUAL 0)
    message(FATAL_ERROR "FAIL ${what}: the check accepted a wrong-way include")
  elseif(NOT expect_ok)
    string(FIND "${err}" "${ARGV3}" at)
    if(at LESS 0)
      message(FATAL_ERROR "FAIL ${what}: the message does not say '${ARGV3}':\n${err}")
    endif()
  endif()
  message("ok   ${what}")
endfunction()

run_check(${SS_ROOT} TRUE "the tree as it is")

# plant <file> <line> <expected text>: a fresh copy with one line added.
function(plant file line expect)
  file(REMOVE_RECURSE ${SS_SCRATCH}/tree)
  file(MAKE_DIRECTORY ${SS_SCRATCH}/tree)
  file(COPY ${SS_ROOT}/cmake DESTINATION ${SS_SCRATCH}/tree)
  foreach(layer ${SS_LAYERS})
    foreach(d ${SS_LAYER_DIRS_${layer}})
      file(GLOB files ${SS_ROOT}/${d}/*.c ${SS_ROOT}/${d}/*.h ${SS_ROOT}/${d}/*.cu ${SS_ROOT}/${d}/*.cuh)
      file(COPY ${files} DESTINATION ${SS_SCRATCH}/tree/${d})
    endforeach()
  endforeach()
  file(READ ${SS_SCRATCH}/tree/${file} text)
  file(WRITE ${SS_SCRATCH}/tree/${file} "${line}\n${text}")
  run_check(${SS_SCRATCH}/tree FALSE "${file} with ${line}" "${expect}")
endfunction()

plant(runtime/base/status.c "#include \"runtime/engine/engine.h\""
      "layer 'base' may not use layer 'engine'")
plant(kernels/cpu/matmul.c "#include \"comm/comm.h\"" "layer 'kernels' may not use layer 'comm'")
plant(comm/comm.c "#include \"kernels/kernels.h\"" "layer 'comm' may not use layer 'kernels'")
plant(runtime/engine/engine.c "#include \"runtime/server/http.h\""
      "layer 'engine' may not use layer 'server'")
plant(runtime/model/model.c "#include \"launcher/cli.h\"" "layer 'model' may not use layer 'launcher'")
plant(runtime/formats/gguf.c "#include \"status.h\"" "name project headers from the source root")
file(REMOVE_RECURSE ${SS_SCRATCH}/tree)
