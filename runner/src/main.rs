fn main() {
    // Output piped into `head` ends the process quietly, as for other command-line tools,
    // instead of a panic on the first write after the reader left.
    // SAFETY: resetting one signal to its default disposition before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    std::process::exit(petnas::cli::main());
}
