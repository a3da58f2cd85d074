fn main() {
    if let Err(e) = patchbay::cli::main() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
