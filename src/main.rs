//! The `serin` binary: the controller's subcommands and the kubectl plugin.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use serin::cli::plugin;

#[derive(Parser)]
#[command(
    name = "serin",
    version,
    about = "Progressive delivery for Kubernetes: canary, blue/green and A/B releases"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run Canary manifests through the engine against a simulated cluster, in virtual time.
    Simulate(serin::cli::simulate::SimulateArgs),
    /// Run the controller: reconcile Canaries in the cluster of the kubeconfig (or in-cluster).
    Controller(serin::controller::ControllerArgs),
    /// Serve conformance tests, manual gates and load tests to Canary webhooks.
    Loadtester(serin::cli::loadtester::LoadtesterArgs),
    /// Print the CustomResourceDefinitions (or write them, one file each, into a folder).
    Crds {
        /// Write canaries.yaml, metrictemplates.yaml and alertproviders.yaml here instead.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Check Canary manifests without a cluster: every broken rule with its field path.
    Validate {
        /// Manifest files (YAML, several documents allowed).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Show Canaries: phase, weight, failed checks, step, checks, age (-w: live, with Events).
    Get(plugin::get::GetArgs),
    /// Wait for the rollout of the target's current revision (for CI): exit 0 promoted,
    /// 1 failed or rolled back, 2 timed out, 3 invalid or missing Canary.
    Wait(plugin::wait::WaitArgs),
    /// Open the gate the rollout waits at, or with --full skip the remaining steps.
    Promote(plugin::promote::PromoteArgs),
    /// Fail the running analysis now and roll all traffic back to the primary.
    Abort(plugin::abort::AbortArgs),
    /// Run the analysis of a failed revision again.
    Retry(plugin::retry::RetryArgs),
    /// Suspend a Canary: nothing is reconciled until it is resumed.
    Pause(plugin::pause::PauseArgs),
    /// Resume a suspended Canary.
    Resume(plugin::resume::ResumeArgs),
    /// Convert a Flagger manifest to a Serin one, reporting what cannot be carried over.
    Convert(plugin::convert::ConvertArgs),
}

fn main() -> ExitCode {
    let cli = parse();
    let code = match cli.command {
        Command::Simulate(args) => u8::try_from(serin::cli::simulate::run(&args)).unwrap_or(1),
        Command::Controller(args) => controller(args),
        Command::Loadtester(args) => u8::try_from(serin::cli::loadtester::run(&args)).unwrap_or(1),
        Command::Crds { dir } => crds(dir),
        Command::Validate { files } => validate(&files),
        Command::Get(args) => plugin::get::run(&args),
        Command::Wait(args) => plugin::wait::run(&args),
        Command::Promote(args) => plugin::promote::run(&args),
        Command::Abort(args) => plugin::abort::run(&args),
        Command::Retry(args) => plugin::retry::run(&args),
        Command::Pause(args) => plugin::pause::run(&args),
        Command::Resume(args) => plugin::resume::run(&args),
        Command::Convert(args) => plugin::convert::run(&args),
    };
    ExitCode::from(code)
}

/// Parses the command line; installed as `kubectl-serin` (a kubectl plugin), help and errors
/// name the command `kubectl serin`.
fn parse() -> Cli {
    let as_plugin = std::env::args_os()
        .next()
        .map(PathBuf::from)
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .is_some_and(|s| s == "kubectl-serin");
    let mut command = Cli::command();
    if as_plugin {
        command = command.bin_name("kubectl serin");
    }
    let matches = command.get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

fn controller(args: serin::controller::ControllerArgs) -> u8 {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("serin controller: cannot start the runtime: {e}");
            return 1;
        }
    };
    match runtime.block_on(serin::controller::run(args)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("serin controller: {e}");
            1
        }
    }
}

fn crds(dir: Option<PathBuf>) -> u8 {
    let result = match dir {
        None => serin::api::crds::all_yaml()
            .map_err(|e| e.to_string())
            .and_then(|y| {
                std::io::stdout()
                    .write_all(y.as_bytes())
                    .map_err(|e| e.to_string())
            }),
        Some(dir) => serin::api::crds::all()
            .into_iter()
            .try_for_each(|(name, crd)| {
                let yaml = serin::api::crds::to_yaml(&crd).map_err(|e| e.to_string())?;
                let path = dir.join(name);
                std::fs::write(&path, yaml).map_err(|e| format!("{}: {e}", path.display()))
            }),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("serin crds: {e}");
            1
        }
    }
}

fn validate(files: &[PathBuf]) -> u8 {
    let mut code = 0;
    for f in files {
        match serin::cli::manifest::load_canaries(f) {
            Ok(canaries) => {
                for c in canaries {
                    println!(
                        "{}: Canary {} is valid",
                        f.display(),
                        c.metadata.name.as_deref().unwrap_or("(unnamed)")
                    );
                }
            }
            Err(e) => {
                eprintln!("{e}");
                code = 2;
            }
        }
    }
    code
}
