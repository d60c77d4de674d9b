//! The `local` image set, for a Docker host without an image registry: a Debian base made
//! by `debootstrap` and `docker import`, then PostgreSQL 15 (Debian's packages), the tansu
//! broker, Debezium's embedded engine with the harness's launcher, and the sink, each built
//! FROM that base out of what the harness already provisions (`docker/local/*/Dockerfile`).
//! Every image is tagged by the hash of its build context, so a changed input builds a new
//! image and an unchanged one is found again (`harness provision --images local`).

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use bollard::Docker;
use bollard::query_parameters::{BuildImageOptions, CreateImageOptions};
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::DockerError;
use crate::provision::Cache;

/// Which images the Docker backend runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum, strum::IntoStaticStr, strum::EnumIter)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum ImageSet {
    /// Pinned tags of the real images, pulled from their registries (the default for users).
    #[default]
    Upstream,
    /// Built here from Debian packages and the harness's own tools (no registry needed).
    Local,
}

impl ImageSet {
    pub fn name(self) -> &'static str {
        self.into()
    }
}

/// Tags of the built local images.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalImages {
    pub base: String,
    pub postgres: String,
    pub broker: String,
    pub debezium: String,
    pub sink: String,
    /// The pods' fault proxy: the workspace's `fault-proxy` binary.
    pub proxy: String,
}

impl LocalImages {
    /// `CDC_LOCAL_<ROLE>=<tag>` lines, the variables docker-compose.local.yml reads.
    pub fn compose_env(&self) -> String {
        self.all().iter().map(|(role, tag)| format!("CDC_LOCAL_{}={tag}\n", role.to_uppercase())).collect()
    }

    /// (role, tag) of every image, base first.
    pub fn all(&self) -> [(&'static str, &str); 6] {
        [
            ("base", &self.base),
            ("postgres", &self.postgres),
            ("broker", &self.broker),
            ("debezium", &self.debezium),
            ("sink", &self.sink),
            ("proxy", &self.proxy),
        ]
    }
}

/// Where the inputs of the local images come from (all provisioned by the harness).
#[derive(Debug, Clone)]
pub struct LocalInputs {
    pub tansu: PathBuf,
    pub debezium_libs: PathBuf,
    pub sink: PathBuf,
    /// The pods' proxy (`fault-proxy`, release-built).
    pub fault_proxy: PathBuf,
}

impl LocalInputs {
    /// Provisions what the images are built from: tansu, the Debezium jars, the sink and the
    /// fault proxy.
    pub async fn provision() -> Result<Self, ImageError> {
        let tools = tokio::task::spawn_blocking(|| crate::provision::Provisioned::provision(true))
            .await
            .map_err(|e| ImageError::Io { path: PathBuf::from("provision"), source: std::io::Error::other(e.to_string()) })?
            .map_err(|e| ImageError::Provision(e.to_string()))?;
        let fault_proxy = tokio::task::spawn_blocking(|| crate::provision::workspace_bin::FAULT_PROXY.ensure())
            .await
            .map_err(|e| ImageError::Io { path: PathBuf::from("provision"), source: std::io::Error::other(e.to_string()) })?
            .map_err(|e| ImageError::Provision(e.to_string()))?;
        let sink = tools.sink.ok_or_else(|| ImageError::Provision("the sink binary was not provisioned".into()))?;
        Ok(Self { tansu: tools.tansu, debezium_libs: tools.debezium_libs, sink, fault_proxy })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("provisioning the local images' inputs: {0}")]
    Provision(String),
    #[error(transparent)]
    Docker(#[from] DockerError),
    #[error("the local base image needs {what}: {hint}")]
    BaseUnavailable { what: &'static str, hint: String },
    #[error("building {image} failed: {reason}; build log {}", log.display())]
    Build { image: String, reason: String, log: PathBuf },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
    move |source| ImageError::Io { path: path.to_path_buf(), source }
}

/// Repository of every local image; the tag is the content hash.
const REPOSITORY: &str = "cdc-harness";
/// The base carries no content hash: it is Debian bookworm as the mirror serves it.
pub const BASE_IMAGE: &str = "cdc-harness/debian:bookworm";

/// One build context: the Dockerfile (with `{{base}}` resolved) and the files it copies.
struct Context {
    name: &'static str,
    dockerfile: String,
    /// Name in the context -> file or directory on the host.
    files: BTreeMap<String, ContextFile>,
}

enum ContextFile {
    Bytes(Vec<u8>),
    Path(PathBuf),
    /// An executable sent without its debug info (`strip --strip-debug`, when present):
    /// a debug harness binary is mostly DWARF. The tag hashes the file as given.
    Stripped(PathBuf),
}

impl Context {
    fn new(name: &'static str, dockerfile: &str, base: &str) -> Self {
        Self { name, dockerfile: dockerfile.replace("{{base}}", base), files: BTreeMap::new() }
    }

    fn bytes(mut self, name: &str, bytes: impl Into<Vec<u8>>) -> Self {
        self.files.insert(name.into(), ContextFile::Bytes(bytes.into()));
        self
    }

    fn path(mut self, name: &str, path: &Path) -> Self {
        self.files.insert(name.into(), ContextFile::Path(path.to_path_buf()));
        self
    }

    fn stripped(mut self, name: &str, path: &Path) -> Self {
        self.files.insert(name.into(), ContextFile::Stripped(path.to_path_buf()));
        self
    }

    /// Hash of the Dockerfile and every file's name and content: the image's tag.
    fn digest(&self) -> Result<String, ImageError> {
        let mut hasher = Sha256::new();
        hasher.update(self.dockerfile.as_bytes());
        for (name, file) in &self.files {
            hasher.update(name.as_bytes());
            match file {
                ContextFile::Bytes(b) => hasher.update(b),
                ContextFile::Path(p) | ContextFile::Stripped(p) => hash_tree(p, &mut hasher)?,
            }
        }
        Ok(hasher.finalize().iter().take(6).map(|b| format!("{b:02x}")).collect())
    }

    fn tag(&self) -> Result<String, ImageError> {
        Ok(format!("{REPOSITORY}/{}:{}", self.name, self.digest()?))
    }

    /// The context as the tar stream `POST /build` takes.
    fn tar(&self) -> Result<Vec<u8>, ImageError> {
        let mut builder = tar::Builder::new(Vec::new());
        builder.follow_symlinks(true);
        // The daemon refuses GNU sparse entries (the cargo-installed tansu binary is sparse).
        builder.sparse(false);
        builder.mode(tar::HeaderMode::Deterministic);
        let add_bytes = |builder: &mut tar::Builder<Vec<u8>>, name: &str, bytes: &[u8], mode: u32| {
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(mode);
            header.set_cksum();
            builder.append_data(&mut header, name, bytes).map_err(io_err(Path::new(name)))
        };
        add_bytes(&mut builder, "Dockerfile", self.dockerfile.as_bytes(), 0o644)?;
        for (name, file) in &self.files {
            match file {
                ContextFile::Bytes(b) => add_bytes(&mut builder, name, b, 0o755)?,
                ContextFile::Path(p) if p.is_dir() => builder.append_dir_all(name, p).map_err(io_err(p))?,
                ContextFile::Path(p) => builder.append_path_with_name(p, name).map_err(io_err(p))?,
                ContextFile::Stripped(p) => match strip_debug(p) {
                    Some(bytes) => add_bytes(&mut builder, name, &bytes, 0o755)?,
                    None => builder.append_path_with_name(p, name).map_err(io_err(p))?,
                },
            }
        }
        builder.into_inner().map_err(io_err(Path::new("context")))
    }
}

/// `path` without debug info, or None when `strip` is missing or fails.
fn strip_debug(path: &Path) -> Option<Vec<u8>> {
    let out = std::env::temp_dir().join(format!("cdc-harness-strip-{}", std::process::id()));
    let status = Command::new("strip").arg("--strip-debug").arg("-o").arg(&out).arg(path).stderr(Stdio::null()).status().ok()?;
    let bytes = status.success().then(|| std::fs::read(&out).ok()).flatten();
    let _ = std::fs::remove_file(&out);
    bytes
}

/// Feeds `path` (a file, or a directory's files in name order) into the hash.
fn hash_tree(path: &Path, hasher: &mut Sha256) -> Result<(), ImageError> {
    if path.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path).map_err(io_err(path))?.filter_map(|e| e.ok().map(|e| e.path())).collect();
        entries.sort();
        for entry in entries {
            hasher.update(entry.file_name().map(|n| n.as_encoded_bytes()).unwrap_or_default());
            hash_tree(&entry, hasher)?;
        }
        return Ok(());
    }
    let mut file = std::fs::File::open(path).map_err(io_err(path))?;
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buffer).map_err(io_err(path))?;
        if n == 0 {
            return Ok(());
        }
        hasher.update(&buffer[..n]);
    }
}

fn contexts(inputs: &LocalInputs, base: &str) -> Vec<Context> {
    vec![
        Context::new("postgres", include_str!("../../../../docker/local/postgres/Dockerfile"), base)
            .bytes("entrypoint.sh", include_str!("../../../../docker/local/postgres/entrypoint.sh")),
        Context::new("broker", include_str!("../../../../docker/local/broker/Dockerfile"), base).path("tansu", &inputs.tansu),
        Context::new("debezium", include_str!("../../../../docker/local/debezium/Dockerfile"), base)
            .path("libs", &inputs.debezium_libs)
            .bytes("DebeziumLauncher.java", include_str!("../../../launcher/DebeziumLauncher.java")),
        Context::new("sink", include_str!("../../../../docker/local/sink/Dockerfile"), base)
            .stripped("sink", &inputs.sink)
            .bytes("sink.toml", include_str!("../../../../docker/sink/sink.toml")),
        Context::new("proxy", include_str!("../../../../docker/local/proxy/Dockerfile"), base).stripped("fault-proxy", &inputs.fault_proxy),
    ]
}

/// The tags the local set has for these inputs (whether built or not).
pub fn local_tags(inputs: &LocalInputs) -> Result<LocalImages, ImageError> {
    let tags: Vec<String> = contexts(inputs, BASE_IMAGE).iter().map(Context::tag).collect::<Result<_, _>>()?;
    Ok(LocalImages {
        base: BASE_IMAGE.into(),
        postgres: tags[0].clone(),
        broker: tags[1].clone(),
        debezium: tags[2].clone(),
        sink: tags[3].clone(),
        proxy: tags[4].clone(),
    })
}

async fn exists(docker: &Docker, image: &str) -> Result<bool, DockerError> {
    match docker.inspect_image(image).await {
        Ok(_) => Ok(true),
        Err(e) => match DockerError::from_bollard("inspect image", image, e) {
            DockerError::NotFound { .. } => Ok(false),
            other => Err(other),
        },
    }
}

/// Builds whatever of the local set is missing, with progress on stderr; returns the tags.
pub async fn ensure_local(docker: &Docker, cache: &Cache, inputs: &LocalInputs) -> Result<LocalImages, ImageError> {
    let logs = cache.dir("images");
    std::fs::create_dir_all(&logs).map_err(io_err(&logs))?;
    // One builder at a time (parallel tests, two terminals): the second finds the images.
    let _lock = tokio::task::block_in_place(|| cache.lock("images"))
        .map_err(|e| ImageError::Io { path: logs.clone(), source: std::io::Error::other(e.to_string()) })?;
    if !exists(docker, BASE_IMAGE).await? {
        import_base(docker, cache, &logs).await?;
    }
    for context in contexts(inputs, BASE_IMAGE) {
        let tag = context.tag()?;
        if exists(docker, &tag).await? {
            continue;
        }
        build(docker, &context, &tag, &logs.join(format!("{}.log", context.name))).await?;
    }
    let built = local_tags(inputs)?;
    // docker-compose.local.yml names the images through these variables (`--env-file`).
    let env = logs.join("local.env");
    std::fs::write(&env, built.compose_env()).map_err(io_err(&env))?;
    Ok(built)
}

/// The Debian mirror apt uses here (`CDC_HARNESS_DEBIAN_MIRROR` overrides it).
fn debian_mirror() -> String {
    if let Ok(mirror) = std::env::var("CDC_HARNESS_DEBIAN_MIRROR") {
        return mirror;
    }
    let sources = ["/etc/apt/sources.list.d/debian.sources", "/etc/apt/sources.list"];
    sources.iter().filter_map(|p| std::fs::read_to_string(p).ok()).find_map(|text| mirror_in(&text)).unwrap_or_else(|| "http://deb.debian.org/debian".into())
}

/// The first Debian archive URI of a sources file (deb822 `URIs:` or one-line `deb`),
/// skipping the security archive.
fn mirror_in(text: &str) -> Option<String> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            line.strip_prefix("URIs:").map(str::trim).or_else(|| line.strip_prefix("deb ").and_then(|rest| rest.split_whitespace().find(|w| w.contains("://"))))
        })
        .flat_map(str::split_whitespace)
        .find(|uri| uri.contains("/debian") && !uri.contains("security"))
        .map(str::to_owned)
}

/// `debootstrap --variant=minbase bookworm` into a scratch folder, then its tar stream
/// into `POST /images/create?fromSrc=-` (what `docker import` does).
async fn import_base(docker: &Docker, cache: &Cache, logs: &Path) -> Result<(), ImageError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(ImageError::BaseUnavailable {
            what: "root",
            hint: "debootstrap builds the Debian base as root: run `sudo harness provision --images local` once".into(),
        });
    }
    if Command::new("debootstrap").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_err() {
        return Err(ImageError::BaseUnavailable { what: "debootstrap", hint: "apt-get install -y debootstrap".into() });
    }
    let root = cache.dir("images/bookworm-rootfs");
    let _ = std::fs::remove_dir_all(&root);
    let mirror = debian_mirror();
    eprintln!("provision: images: Debian base (debootstrap bookworm from {mirror}, ~1 min)");
    let log = logs.join("debootstrap.log");
    let mut command = Command::new("debootstrap");
    command.args(["--variant=minbase", "bookworm"]).arg(&root).arg(&mirror);
    let outcome = tokio::task::spawn_blocking(move || crate::provision::run_installer("the Debian base (debootstrap)", &mut command, &log))
        .await
        .map_err(|e| ImageError::Build { image: BASE_IMAGE.into(), reason: e.to_string(), log: logs.join("debootstrap.log") })?;
    if let Err(e) = outcome {
        let _ = std::fs::remove_dir_all(&root);
        return Err(ImageError::Build { image: BASE_IMAGE.into(), reason: e.to_string(), log: logs.join("debootstrap.log") });
    }
    eprintln!("provision: images: importing {BASE_IMAGE}");
    let mut tar = tokio::process::Command::new("tar")
        .arg("-C")
        .arg(&root)
        .args(["--numeric-owner", "-c", "."])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(io_err(&root))?;
    let stdout = tar.stdout.take().expect("piped stdout");
    let body = bollard::body_try_stream(tokio_util::io::ReaderStream::new(stdout));
    let (repo, tag) = BASE_IMAGE.split_once(':').expect("tagged base");
    let options = CreateImageOptions { from_src: Some("-".into()), repo: Some(repo.into()), tag: Some(tag.into()), ..Default::default() };
    let mut stream = docker.create_image(Some(options), Some(body), None);
    while let Some(item) = stream.next().await {
        let info = item.map_err(|e| DockerError::from_bollard("import image", BASE_IMAGE, e))?;
        if let Some(message) = info.error_detail.and_then(|d| d.message) {
            return Err(ImageError::Build { image: BASE_IMAGE.into(), reason: message, log: logs.join("debootstrap.log") });
        }
    }
    let status = tar.wait().await.map_err(io_err(&root))?;
    let _ = std::fs::remove_dir_all(&root);
    if !status.success() {
        return Err(ImageError::Build {
            image: BASE_IMAGE.into(),
            reason: format!("tar of the root file system exited with {status}"),
            log: logs.join("debootstrap.log"),
        });
    }
    Ok(())
}

/// `POST /build` of one context; every output line goes to `log`, progress to stderr.
async fn build(docker: &Docker, context: &Context, tag: &str, log: &Path) -> Result<(), ImageError> {
    use std::io::Write as _;
    eprintln!("provision: images: building {tag}");
    let body = context.tar()?;
    let mut out = std::fs::File::create(log).map_err(io_err(log))?;
    let options = BuildImageOptions { t: Some(tag.into()), rm: true, forcerm: true, ..Default::default() };
    let mut stream = docker.build_image(options, None, Some(bollard::body_full(body.into())));
    let started = Instant::now();
    let mut last_report = started;
    let fail = |reason: String| ImageError::Build { image: tag.into(), reason, log: log.to_path_buf() };
    while let Some(item) = stream.next().await {
        let info = item.map_err(|e| fail(e.to_string()))?;
        if let Some(line) = &info.stream {
            let _ = out.write_all(line.as_bytes());
            if line.starts_with("Step ") && last_report.elapsed().as_secs() >= 5 {
                last_report = Instant::now();
                eprintln!("provision: images: {} ({}s): {}", context.name, started.elapsed().as_secs(), line.trim());
            }
        }
        if let Some(message) = info.error_detail.and_then(|d| d.message) {
            let _ = writeln!(out, "ERROR: {message}");
            return Err(fail(message));
        }
    }
    eprintln!("provision: images: built {tag} in {}s", started.elapsed().as_secs());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mirror_is_read_from_either_sources_format() {
        let deb822 = "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm\n\nTypes: deb\nURIs: http://deb.debian.org/debian-security\n";
        assert_eq!(mirror_in(deb822).as_deref(), Some("http://deb.debian.org/debian"));
        let one_line = "deb [arch=amd64] http://mirror.example/debian bookworm main\n";
        assert_eq!(mirror_in(one_line).as_deref(), Some("http://mirror.example/debian"));
        assert_eq!(mirror_in("deb https://packages.cloud.google.com/apt cloud-sdk main\n"), None);
    }

    #[test]
    fn a_changed_input_changes_the_tag() {
        let a = Context::new("sink", "FROM {{base}}\n", BASE_IMAGE).bytes("sink", b"one".to_vec());
        let b = Context::new("sink", "FROM {{base}}\n", BASE_IMAGE).bytes("sink", b"two".to_vec());
        assert!(a.dockerfile.starts_with("FROM cdc-harness/debian:bookworm"));
        assert_ne!(a.tag().unwrap(), b.tag().unwrap());
        assert!(a.tag().unwrap().starts_with("cdc-harness/sink:"));
        assert_eq!(a.tag().unwrap(), a.tag().unwrap());
    }

    #[test]
    fn the_context_tar_holds_the_dockerfile_and_the_files() {
        let context = Context::new("postgres", "FROM {{base}}\n", BASE_IMAGE).bytes("entrypoint.sh", b"#!/bin/sh\n".to_vec());
        let mut archive = tar::Archive::new(std::io::Cursor::new(context.tar().unwrap()));
        let names: Vec<String> = archive.entries().unwrap().map(|e| e.unwrap().path().unwrap().display().to_string()).collect();
        assert_eq!(names, ["Dockerfile", "entrypoint.sh"]);
    }
}
