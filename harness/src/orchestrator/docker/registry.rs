//! Registry credentials for pulls, read from the Docker client's config as `docker pull`
//! uses them: `$DOCKER_CONFIG/config.json` (default `~/.docker/config.json`), `auths` entries
//! keyed by registry host with a base64 `user:password` (or an identity token). Credential
//! helpers (`credsStore`) are not run: such a registry pulls anonymously, as before.

use std::collections::HashMap;

use base64::Engine as _;
use bollard::auth::DockerCredentials;
use serde::Deserialize;

#[derive(Deserialize, Default)]
struct ConfigFile {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
}

#[derive(Deserialize)]
struct AuthEntry {
    auth: Option<String>,
    identitytoken: Option<String>,
}

/// Docker Hub's key in `auths`.
const DOCKER_HUB: &str = "https://index.docker.io/v1/";

/// The registry an image reference names: its first path part when that looks like a host.
fn registry_of(image: &str) -> &str {
    match image.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => first,
        _ => DOCKER_HUB,
    }
}

fn lookup(config: &ConfigFile, image: &str) -> Option<DockerCredentials> {
    let registry = registry_of(image);
    let entry = config.auths.iter().find(|(key, _)| {
        let host = key.trim_start_matches("https://").trim_start_matches("http://").split('/').next().unwrap_or_default();
        key.as_str() == registry || host == registry || (registry == DOCKER_HUB && host == "index.docker.io")
    })?;
    let (key, entry) = entry;
    let (username, password) = match &entry.auth {
        Some(auth) => {
            let decoded = base64::engine::general_purpose::STANDARD.decode(auth.trim()).ok()?;
            let text = String::from_utf8(decoded).ok()?;
            let (user, pass) = text.split_once(':')?;
            (Some(user.to_string()), Some(pass.to_string()))
        }
        None => (None, None),
    };
    Some(DockerCredentials { username, password, identitytoken: entry.identitytoken.clone(), serveraddress: Some(key.clone()), ..Default::default() })
}

/// Credentials for pulling `image`, if the Docker config has some for its registry.
pub(crate) fn credentials_for(image: &str) -> Option<DockerCredentials> {
    let dir = std::env::var_os("DOCKER_CONFIG")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".docker")))?;
    let text = std::fs::read_to_string(dir.join("config.json")).ok()?;
    match serde_json::from_str::<ConfigFile>(&text) {
        Ok(config) => lookup(&config, image),
        Err(error) => {
            tracing::warn!(message = "Docker config unreadable, pulling without credentials", path = %dir.join("config.json").display(), %error);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> ConfigFile {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn the_registry_is_the_first_part_when_it_is_a_host() {
        assert_eq!(registry_of("postgres:15"), DOCKER_HUB);
        assert_eq!(registry_of("apache/kafka:4.1.0"), DOCKER_HUB);
        assert_eq!(registry_of("quay.io/debezium/connect:3.3"), "quay.io");
        assert_eq!(registry_of("localhost:5000/sink:1"), "localhost:5000");
    }

    #[test]
    fn credentials_come_from_the_matching_auths_entry() {
        // "user:s3cret"
        let c = config(r#"{"auths": {"quay.io": {"auth": "dXNlcjpzM2NyZXQ="}, "https://index.docker.io/v1/": {"auth": "aHViOmh1YnBhc3M="}}}"#);
        let quay = lookup(&c, "quay.io/debezium/connect:3.3").expect("quay credentials");
        assert_eq!((quay.username.as_deref(), quay.password.as_deref()), (Some("user"), Some("s3cret")));
        let hub = lookup(&c, "postgres:15").expect("hub credentials");
        assert_eq!(hub.username.as_deref(), Some("hub"));
        assert!(lookup(&c, "ghcr.io/x/y:1").is_none());
        assert!(lookup(&config("{}"), "postgres:15").is_none());
    }
}
