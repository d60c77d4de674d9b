//! The one HTTP client of the process (Kafka Connect, the sink's and the launcher's status
//! and metrics, the load API): a connection pool shared by every caller, HTTPS through
//! rustls with the platform's roots (certificates and host names verified), plus the
//! private CAs the endpoints file names (`[connect] ca`, `[sink] ca`). Each call sets its
//! own deadline with `RequestBuilder::timeout`.

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

/// The extra roots (PEM text, one entry per file) and the client built with them.
struct Shared {
    roots: Vec<String>,
    client: Option<&'static reqwest::Client>,
}

static SHARED: Mutex<Shared> = Mutex::new(Shared { roots: Vec::new(), client: None });

fn build(roots: &[String]) -> Result<reqwest::Client, String> {
    let mut certs = Vec::new();
    for pem in roots {
        certs.extend(reqwest::Certificate::from_pem_bundle(pem.as_bytes()).map_err(|e| error_text(&e))?);
    }
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        // The deadline of a call that sets none.
        .timeout(Duration::from_secs(30))
        // Added to the platform's roots, not instead of them: other hops keep public CAs.
        .tls_certs_merge(certs)
        .build()
        .map_err(|e| error_text(&e))
}

pub fn client() -> &'static reqwest::Client {
    let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(client) = shared.client {
        return client;
    }
    // The roots were parsed by `trust`; the platform verifier needs no file.
    let client: &'static reqwest::Client = Box::leak(Box::new(build(&shared.roots).expect("the HTTP client builds with roots `trust` accepted")));
    shared.client = Some(client);
    client
}

/// Adds the CA certificate(s) in the PEM file `path` to the roots of the shared client
/// (from the next `client()` on; a client made before keeps its roots, so call this when
/// the configuration is read, before any request). The error says what is wrong with the file.
pub fn trust(path: &Path) -> Result<(), String> {
    let pem = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes()).map_err(|e| format!("{}: {}", path.display(), error_text(&e)))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in the file", path.display()));
    }
    let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    if shared.roots.contains(&pem) {
        return Ok(());
    }
    let mut roots = shared.roots.clone();
    roots.push(pem);
    // Built now so that a certificate rustls refuses fails here, naming the file.
    let client = build(&roots).map_err(|e| format!("{}: {e}", path.display()))?;
    shared.roots = roots;
    // A new client (one per distinct CA file a process reads: a bounded leak); callers
    // holding the old one keep working with the old roots.
    shared.client = Some(Box::leak(Box::new(client)));
    Ok(())
}

/// An error with its causes: reqwest's own text ("error sending request for url ...")
/// leaves out why (an unknown issuer, a refused connection).
pub fn error_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text = format!("{text}: {cause_text}");
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    /// HTTPS is built in: a TLS error (not "scheme not supported") for a server that speaks none.
    #[tokio::test]
    async fn https_is_supported_and_verified() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let _ = tokio::io::AsyncWriteExt::write_all(&mut socket, b"HTTP/1.1 200 OK\r\n\r\n").await;
        });
        let err = super::client().get(format!("https://{addr}/")).send().await.unwrap_err();
        let chain = format!("{err:?}");
        assert!(!chain.contains("scheme is not http"), "{chain}");
        assert!(err.is_connect(), "{chain}");
    }

    #[test]
    fn a_ca_file_that_is_missing_or_holds_no_certificate_is_an_error_naming_it() {
        let err = super::trust(std::path::Path::new("/nonexistent/ca.pem")).unwrap_err();
        assert!(err.starts_with("/nonexistent/ca.pem: "), "{err}");
        let empty = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(empty.path(), "not a certificate\n").unwrap();
        let err = super::trust(empty.path()).unwrap_err();
        assert!(err.starts_with(&format!("{}: ", empty.path().display())), "{err}");
    }
}
