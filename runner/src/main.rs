fn main() {
    std::process::exit(petnas::cli::main());
}
