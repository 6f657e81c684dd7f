//! The `serin` binary: the controller's subcommands and the kubectl plugin.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Simulate(args) => u8::try_from(serin::cli::simulate::run(&args)).unwrap_or(1),
        Command::Controller(args) => controller(args),
        Command::Loadtester(args) => u8::try_from(serin::cli::loadtester::run(&args)).unwrap_or(1),
        Command::Crds { dir } => crds(dir),
        Command::Validate { files } => validate(&files),
    };
    ExitCode::from(code)
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
