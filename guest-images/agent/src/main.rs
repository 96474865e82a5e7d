//! `ringfence-agent`: run as `/init` in a ringfence Linux guest. Outside a guest it only
//! offers `ringfence-agent encode ARG...`, which prints the `ringfence.cmd=` parameter for a
//! command.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("encode") {
        return match ringfence_agent::protocol::cmd_param(&args[1..]) {
            Ok(p) => {
                println!("{p}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("ringfence-agent: {e}");
                ExitCode::from(2)
            }
        };
    }
    if std::process::id() != 1 {
        eprintln!(
            "ringfence-agent runs as /init (PID 1) inside a ringfence guest; \
             on the host use `ringfence-agent encode PROGRAM ARGS...` to build ringfence.cmd="
        );
        return ExitCode::from(2);
    }
    ringfence_agent::runtime::run_as_init()
}
