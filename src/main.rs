//! The `hearth` binary: parse the command line and hand over to the library.

// mimalloc instead of glibc's allocator: per-request buffers are reused instead of mapped and
// unmapped, and large ones sit in huge pages. Measured (docs/performance.md): GET-hit at
// c=64 +30 %, PUT +14 %, for a larger resident set (~385 MiB instead of ~100 MiB in the soak).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    hearth::cli::main()
}
