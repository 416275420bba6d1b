//! The `teachcam` executable: parse, set up logging, dispatch, map errors to exit codes.
//! All work happens in the library (`teachcam::app`).

use clap::Parser;
use clap::error::ErrorKind;

fn main() {
    let cli = match teachcam::cli::Cli::try_parse() {
        Ok(c) => c,
        // A bad value (a threshold out of range, an unknown camera URI) is one line naming
        // the flag and the rule, exit code 2, like every other error.
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::ValueValidation | ErrorKind::InvalidValue
            ) =>
        {
            let text = e.to_string();
            let first = text.lines().next().unwrap_or_default();
            eprintln!("teachcam: {first}");
            std::process::exit(2);
        }
        Err(e) => e.exit(),
    };
    let level = match (cli.global.quiet, cli.global.verbose) {
        (true, _) => log::LevelFilter::Error,
        (false, 0) => log::LevelFilter::Warn,
        (false, 1) => log::LevelFilter::Info,
        _ => log::LevelFilter::Debug,
    };
    env_logger::Builder::new()
        .filter_level(level)
        .parse_env("TEACHCAM_LOG")
        .format(|buf, record| {
            use std::io::Write;
            let level = record.level().as_str().to_ascii_lowercase();
            writeln!(buf, "teachcam: {level}: {}", record.args())
        })
        .init();
    if let Err(e) = teachcam::app::run(cli) {
        // SIGHUP: a clean stop the service manager restarts (the unit's RestartForceExitStatus).
        if let Some(r) = e.downcast_ref::<teachcam::app::ReloadRequested>() {
            eprintln!("teachcam: {r}");
            std::process::exit(teachcam::app::RELOAD_EXIT_CODE);
        }
        // A closed stdout (`teachcam eval ... | head`) is not an error worth reporting.
        if e.chain()
            .filter_map(|c| c.downcast_ref::<std::io::Error>())
            .any(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
        {
            std::process::exit(0);
        }
        // One line that names the file or setting and says what to do; exit code 2.
        // Causes whose text the message already contains are not repeated.
        let mut msg = e.to_string();
        for cause in e.chain().skip(1) {
            let c = cause.to_string();
            if !msg.contains(&c) {
                msg = format!("{msg}: {c}");
            }
        }
        eprintln!("teachcam: error: {msg}");
        std::process::exit(2);
    }
}
