//! The `connstatus` binary: a thin shell over the library's commands.

/// mimalloc instead of the system allocator: the request path allocates
/// small, short-lived buffers on every request, and glibc's malloc showed up
/// at about a tenth of the service's CPU in the profile.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    connstatus::cli::main()
}
