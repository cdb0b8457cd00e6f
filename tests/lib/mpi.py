"""Running shardserve over several ranks from the tests.

`launch_cmd(bin, tp, args)` is the command line for `shardserve launch --tp N
-- args`, which builds the mpirun line itself (root variables, oversubscribe
and yield when ranks outnumber cores).  `mpi_available()` tells whether an
mpirun is on PATH; a test that needs one and finds none fails (setup installs
Open MPI), it does not skip.
"""
import os
import shutil


def mpi_available():
    return shutil.which("mpirun") is not None


def launch_cmd(binary, tp, args):
    if tp == 1:
        return [binary] + list(args)
    return [binary, "launch", "--tp", str(tp), "--"] + list(args)


def mpi_env():
    env = dict(os.environ)
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    # Keep Open MPI from probing network interfaces that are not there.
    env.setdefault("OMPI_MCA_btl", "self,vader")
    # Under AddressSanitizer, Open MPI's leaks are suppressed by library name
    # (tests/lsan.supp), which needs full stacks through its dlopen'ed modules.
    if "ASAN_OPTIONS" in env and "fast_unwind_on_malloc" not in env["ASAN_OPTIONS"]:
        env["ASAN_OPTIONS"] += ":fast_unwind_on_malloc=0"
    if "ASAN_OPTIONS" in env:
        # Modules Open MPI unloads at MPI_Finalize leave frames with no name,
        # which no suppression matches: keep them loaded.
        env.setdefault("OMPI_MCA_mca_base_component_disable_dlclose", "1")
    return env
