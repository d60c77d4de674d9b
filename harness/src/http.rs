//! The one HTTP client of the process (Kafka Connect, the sink's and the launcher's status
//! and metrics, the load API): a connection pool shared by every caller, HTTPS through
//! rustls with the platform's roots (certificates and host names verified). Each call sets
//! its own deadline with `RequestBuilder::timeout`.

use std::sync::OnceLock;
use std::time::Duration;

pub fn client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            // The deadline of a call that sets none.
            .timeout(Duration::from_secs(30))
            .build()
            .expect("the HTTP client builds: rustls with the platform verifier needs no file")
    })
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
}
