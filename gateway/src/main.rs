//! `gateway [--config FILE]`: loads the configuration, installs logging, serves until
//! SIGTERM/SIGINT. Everything else lives in the library (`gateway::run`).

use std::path::PathBuf;
use std::process::ExitCode;

use gateway::config::{Settings, DEFAULT_TOML};

const USAGE: &str = "usage: gateway [--config FILE] [--print-default-config]

Configuration: compiled-in defaults < FILE (or GW_CONFIG=FILE) < GW__SECTION__KEY environment
variables. `--print-default-config` prints every key with its default and meaning.";

fn main() -> ExitCode {
    let mut config_file = std::env::var_os("GW_CONFIG").map(PathBuf::from);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--config" | "-c" => match args.next() {
                Some(path) => config_file = Some(PathBuf::from(path)),
                None => return fail("--config needs a file path"),
            },
            "--print-default-config" => {
                print!("{DEFAULT_TOML}");
                return ExitCode::SUCCESS;
            }
            "--help" | "-h" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => return fail(&format!("unknown argument {other:?}\n{USAGE}")),
        }
    }

    let settings = match Settings::load(config_file.as_deref()) {
        Ok(settings) => settings,
        Err(error) => return fail(&error.to_string()),
    };
    if let Err(error) = gateway::telemetry::init(&settings.log) {
        return fail(&error);
    }
    let listener = match gateway::bind(settings.server.bind, settings.server.backlog) {
        Ok(listener) => listener,
        Err(error) => return fail(&format!("cannot bind {}: {error}", settings.server.bind)),
    };
    let served = gateway::serve(settings, listener);
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => fail(&error.to_string()),
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("gateway: {message}");
    ExitCode::from(2)
}
