//! librdkafka security settings: checked before a client is made (so a typo is an error
//! naming the setting, not a plaintext connection or a hang), completed with a verified
//! host name unless turned off, and described for a pre-flight.

use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KafkaSecurityError {
    #[error("security.protocol {0:?} is not one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL")]
    Protocol(String),
    #[error("sasl.mechanism {0:?} is not one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 (GSSAPI and OAUTHBEARER are not built in)")]
    Mechanism(String),
    #[error("security.protocol {protocol} needs {missing}")]
    Missing { protocol: String, missing: &'static str },
    #[error("{key} is set but security.protocol is {protocol}, which does not use it")]
    Unused { key: String, protocol: String },
    #[error("{key} {path}: {reason}")]
    File { key: String, path: String, reason: String },
    #[error("{0} is set without {1}")]
    Pair(&'static str, &'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl Protocol {
    pub fn parse(value: &str) -> Option<Self> {
        Some(match value.to_ascii_uppercase().as_str() {
            "PLAINTEXT" => Self::Plaintext,
            "SSL" => Self::Ssl,
            "SASL_PLAINTEXT" => Self::SaslPlaintext,
            "SASL_SSL" => Self::SaslSsl,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Plaintext => "PLAINTEXT",
            Self::Ssl => "SSL",
            Self::SaslPlaintext => "SASL_PLAINTEXT",
            Self::SaslSsl => "SASL_SSL",
        }
    }

    pub fn encrypted(self) -> bool {
        matches!(self, Self::Ssl | Self::SaslSsl)
    }

    pub fn sasl(self) -> bool {
        matches!(self, Self::SaslPlaintext | Self::SaslSsl)
    }
}

/// librdkafka keys whose values are credentials: kept out of maps that get printed.
pub fn is_credential_key(key: &str) -> bool {
    ["password", "secret", "sasl.jaas.config", "ssl.key.pem", "token"].iter().any(|s| key.contains(s))
}

/// Files librdkafka reads, checked here so that the error names the setting.
const FILE_SETTINGS: [&str; 4] = ["ssl.ca.location", "ssl.certificate.location", "ssl.key.location", "ssl.crl.location"];

/// What a client with these settings guarantees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaSecurity {
    pub protocol: Protocol,
    /// The broker's certificate chain is checked.
    pub verify_certificate: bool,
    /// ... and its host name.
    pub verify_hostname: bool,
    pub mechanism: Option<String>,
}

impl KafkaSecurity {
    /// One line for a pre-flight.
    pub fn describe(&self) -> String {
        let sasl = self.mechanism.as_ref().map(|m| format!(", SASL {m}")).unwrap_or_default();
        if !self.protocol.encrypted() {
            return format!("{}: plaintext{sasl}", self.protocol.name());
        }
        let checks = match (self.verify_certificate, self.verify_hostname) {
            (true, true) => "certificate and host name verified",
            (true, false) => "certificate verified, host name not",
            (false, _) => "certificate not verified",
        };
        format!("{}: TLS, {checks}{sasl}", self.protocol.name())
    }

    pub fn verified(&self) -> bool {
        self.protocol.encrypted() && self.verify_certificate && self.verify_hostname
    }
}

/// Checks the security settings in `settings` (librdkafka keys) and adds what makes the
/// default safe: `ssl.endpoint.identification.algorithm=https` (host name verification)
/// unless it is set.
pub fn check(settings: &mut BTreeMap<String, String>) -> Result<KafkaSecurity, KafkaSecurityError> {
    let protocol_name = settings.get("security.protocol").cloned().unwrap_or_else(|| "PLAINTEXT".into());
    let protocol = Protocol::parse(&protocol_name).ok_or(KafkaSecurityError::Protocol(protocol_name))?;
    let unused = |key: &str| KafkaSecurityError::Unused { key: key.to_string(), protocol: protocol.name().into() };
    let mechanism = if protocol.sasl() {
        let mechanism = settings.get("sasl.mechanism").or(settings.get("sasl.mechanisms")).cloned().unwrap_or_else(|| "GSSAPI".into());
        if !["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"].contains(&mechanism.as_str()) {
            return Err(KafkaSecurityError::Mechanism(mechanism));
        }
        for (key, what) in [("sasl.username", "sasl.username"), ("sasl.password", "sasl.password (a secret)")] {
            if settings.get(key).is_none_or(|v| v.is_empty()) {
                return Err(KafkaSecurityError::Missing { protocol: protocol.name().into(), missing: what });
            }
        }
        Some(mechanism)
    } else {
        if let Some(key) = settings.keys().find(|k| k.starts_with("sasl.")) {
            return Err(unused(key));
        }
        None
    };
    if protocol.encrypted() {
        for key in FILE_SETTINGS {
            if let Some(path) = settings.get(key) {
                std::fs::File::open(Path::new(path)).map_err(|e| KafkaSecurityError::File { key: key.into(), path: path.clone(), reason: e.to_string() })?;
            }
        }
        let has = |key: &str| settings.contains_key(key);
        if has("ssl.certificate.location") != (has("ssl.key.location") || has("ssl.key.pem")) {
            return Err(if has("ssl.certificate.location") {
                KafkaSecurityError::Pair("ssl.certificate.location", "ssl.key.location")
            } else {
                KafkaSecurityError::Pair("ssl.key.location", "ssl.certificate.location")
            });
        }
        settings.entry("ssl.endpoint.identification.algorithm".into()).or_insert_with(|| "https".into());
    } else if let Some(key) = settings.keys().find(|k| k.starts_with("ssl.")) {
        return Err(unused(key));
    }
    let off = |key: &str, value: &str| settings.get(key).is_some_and(|v| v.eq_ignore_ascii_case(value));
    Ok(KafkaSecurity {
        protocol,
        verify_certificate: protocol.encrypted() && !off("enable.ssl.certificate.verification", "false"),
        verify_hostname: protocol.encrypted() && !off("ssl.endpoint.identification.algorithm", "none"),
        mechanism,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn ssl_turns_host_name_verification_on_unless_turned_off() {
        let mut s = settings(&[("security.protocol", "SSL")]);
        let security = check(&mut s).unwrap();
        assert_eq!(s["ssl.endpoint.identification.algorithm"], "https");
        assert!(security.verified(), "{security:?}");
        let mut s = settings(&[("security.protocol", "ssl"), ("ssl.endpoint.identification.algorithm", "none")]);
        let security = check(&mut s).unwrap();
        assert!(!security.verified());
        assert!(security.describe().contains("host name not"), "{}", security.describe());
        assert!(check(&mut BTreeMap::new()).unwrap().describe().contains("plaintext"));
    }

    #[test]
    fn sasl_mechanisms_and_credentials_are_checked() {
        for mechanism in ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] {
            let mut s = settings(&[("security.protocol", "SASL_SSL"), ("sasl.mechanism", mechanism), ("sasl.username", "u"), ("sasl.password", "p")]);
            assert_eq!(check(&mut s).unwrap().mechanism.as_deref(), Some(mechanism));
        }
        let mut s = settings(&[("security.protocol", "SASL_SSL"), ("sasl.mechanism", "SCRAM-SHA-1"), ("sasl.username", "u"), ("sasl.password", "p")]);
        assert_eq!(check(&mut s), Err(KafkaSecurityError::Mechanism("SCRAM-SHA-1".into())));
        let mut s = settings(&[("security.protocol", "SASL_PLAINTEXT"), ("sasl.mechanism", "PLAIN"), ("sasl.username", "u")]);
        assert!(matches!(check(&mut s), Err(KafkaSecurityError::Missing { missing, .. }) if missing.starts_with("sasl.password")));
        // A typo'd protocol or settings the protocol ignores are errors, not plaintext.
        assert!(matches!(check(&mut settings(&[("security.protocol", "TLS")])), Err(KafkaSecurityError::Protocol(_))));
        assert!(matches!(check(&mut settings(&[("ssl.ca.location", "/ca.pem")])), Err(KafkaSecurityError::Unused { .. })));
        assert!(matches!(check(&mut settings(&[("security.protocol", "SSL"), ("sasl.username", "u")])), Err(KafkaSecurityError::Unused { .. })));
    }

    /// PLAIN (no broker here offers it, see the README): its settings and error paths.
    #[test]
    fn plain_needs_a_user_name_and_a_password_on_either_sasl_protocol() {
        for protocol in ["SASL_PLAINTEXT", "SASL_SSL"] {
            let mut s = settings(&[("security.protocol", protocol), ("sasl.mechanism", "PLAIN"), ("sasl.username", "u"), ("sasl.password", "p w'\"=")]);
            let security = check(&mut s).unwrap();
            assert_eq!(security.mechanism.as_deref(), Some("PLAIN"));
            assert!(security.describe().ends_with("SASL PLAIN"), "{}", security.describe());
            assert_eq!(security.protocol.encrypted(), protocol == "SASL_SSL");
            // librdkafka's plural spelling is accepted too.
            let mut s = settings(&[("security.protocol", protocol), ("sasl.mechanisms", "PLAIN"), ("sasl.username", "u"), ("sasl.password", "p")]);
            assert_eq!(check(&mut s).unwrap().mechanism.as_deref(), Some("PLAIN"));
        }
        let missing = |pairs: &[(&str, &str)]| match check(&mut settings(pairs)) {
            Err(KafkaSecurityError::Missing { missing, .. }) => missing,
            other => panic!("{other:?}"),
        };
        assert_eq!(missing(&[("security.protocol", "SASL_SSL"), ("sasl.mechanism", "PLAIN"), ("sasl.password", "p")]), "sasl.username");
        assert_eq!(missing(&[("security.protocol", "SASL_SSL"), ("sasl.mechanism", "PLAIN"), ("sasl.username", ""), ("sasl.password", "p")]), "sasl.username");
        assert!(
            missing(&[("security.protocol", "SASL_SSL"), ("sasl.mechanism", "PLAIN"), ("sasl.username", "u"), ("sasl.password", "")])
                .starts_with("sasl.password")
        );
        // No mechanism is librdkafka's GSSAPI, which is not built: an error, not a Kerberos attempt.
        let err = check(&mut settings(&[("security.protocol", "SASL_PLAINTEXT"), ("sasl.username", "u"), ("sasl.password", "p")])).unwrap_err();
        assert_eq!(err, KafkaSecurityError::Mechanism("GSSAPI".into()));
        assert!(err.to_string().contains("GSSAPI and OAUTHBEARER are not built in"), "{err}");
        // Mechanism names are exact, as librdkafka's are.
        assert!(matches!(
            check(&mut settings(&[("security.protocol", "SASL_SSL"), ("sasl.mechanism", "plain"), ("sasl.username", "u"), ("sasl.password", "p")])),
            Err(KafkaSecurityError::Mechanism(_))
        ));
        // PLAIN on a protocol without SASL is refused by name.
        let err = check(&mut settings(&[("security.protocol", "SSL"), ("sasl.mechanism", "PLAIN")])).unwrap_err();
        assert_eq!(err, KafkaSecurityError::Unused { key: "sasl.mechanism".into(), protocol: "SSL".into() });
    }

    #[test]
    fn certificate_files_must_exist_and_come_in_pairs() {
        let mut s = settings(&[("security.protocol", "SSL"), ("ssl.ca.location", "/nonexistent/ca.pem")]);
        assert!(matches!(check(&mut s), Err(KafkaSecurityError::File { key, .. }) if key == "ssl.ca.location"));
        let cert = tempfile::NamedTempFile::new().unwrap();
        let path = cert.path().to_str().unwrap();
        let mut s = settings(&[("security.protocol", "SSL"), ("ssl.certificate.location", path)]);
        assert_eq!(check(&mut s), Err(KafkaSecurityError::Pair("ssl.certificate.location", "ssl.key.location")));
    }
}
