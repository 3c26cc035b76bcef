fn main() -> std::process::ExitCode {
    mpanel::cli::main()
}
