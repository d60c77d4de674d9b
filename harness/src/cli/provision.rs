//! `harness provision`: the local backend's tools, and the local Docker images.

use harness::exit::Outcome;
use harness::orchestrator::docker::images::{self, ImageSet};

#[derive(clap::Args)]
pub(crate) struct ProvisionArgs {
    /// Docker images to make ready: `local` builds them here (debootstrap base, then
    /// PostgreSQL, tansu, Debezium and the sink FROM it); `upstream` needs nothing here.
    #[arg(long, value_enum)]
    images: Option<ImageSet>,
}

pub(crate) async fn exec(args: ProvisionArgs) -> anyhow::Result<Outcome> {
    let tools = tokio::task::spawn_blocking(|| harness::provision::Provisioned::provision(true)).await??;
    println!("postgres  {}", tools.pg_bin.display());
    println!("java      {}", tools.java.display());
    println!("tansu     {}", tools.tansu.display());
    println!("debezium  {}", tools.debezium_libs.display());
    println!("k6        {}", tools.k6.display());
    if let Some(sink) = &tools.sink {
        println!("sink      {}", sink.display());
    }
    if args.images == Some(ImageSet::Local) {
        let docker = harness::orchestrator::docker::connect().await?;
        let inputs = images::LocalInputs::provision().await?;
        let built = images::ensure_local(&docker, &harness::provision::Cache::locate()?, &inputs).await?;
        for (role, tag) in built.all() {
            println!("image {role:<9} {tag}");
        }
    }
    Ok(Outcome::Pass)
}
