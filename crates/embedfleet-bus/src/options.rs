//! How to reach NATS: flags and `EMBEDFLEET_NATS_*` variables, turned into async-nats options.

use clap::Args;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Args, Default)]
pub struct NatsArgs {
    /// NATS server URLs, comma-separated. Without credentials in them: a URL is logged and may sit
    /// in a ConfigMap, so user names, passwords and tokens have flags of their own.
    #[arg(long, env = "EMBEDFLEET_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// A NATS credentials file (JWT + NKey).
    #[arg(long, env = "EMBEDFLEET_NATS_CREDS")]
    pub nats_creds: Option<PathBuf>,
    #[arg(long, env = "EMBEDFLEET_NATS_USER")]
    pub nats_user: Option<String>,
    #[arg(long, env = "EMBEDFLEET_NATS_PASSWORD", hide_env_values = true)]
    pub nats_password: Option<String>,
    /// A token the server's authorization expects.
    #[arg(long, env = "EMBEDFLEET_NATS_TOKEN", hide_env_values = true)]
    pub nats_token: Option<String>,
    /// A file holding an NKey seed (`SU…`) the server knows this user by.
    #[arg(long, env = "EMBEDFLEET_NATS_NKEY")]
    pub nats_nkey: Option<PathBuf>,
    /// Require TLS.
    #[arg(long, env = "EMBEDFLEET_NATS_TLS")]
    pub nats_tls: bool,
    /// A PEM file of the CA that signed the server's certificate (implies --nats-tls).
    #[arg(long, env = "EMBEDFLEET_NATS_CA")]
    pub nats_ca: Option<PathBuf>,
    /// A PEM client certificate for mutual TLS (with --nats-client-key; implies --nats-tls).
    #[arg(long, env = "EMBEDFLEET_NATS_CLIENT_CERT", requires = "nats_client_key")]
    pub nats_client_cert: Option<PathBuf>,
    /// The PEM private key of --nats-client-cert.
    #[arg(long, env = "EMBEDFLEET_NATS_CLIENT_KEY", requires = "nats_client_cert")]
    pub nats_client_key: Option<PathBuf>,
}

/// Connection settings, built from [`NatsArgs`] or by hand in tests.
#[derive(Debug, Clone)]
pub struct BusOptions {
    pub urls: Vec<String>,
    pub creds: Option<PathBuf>,
    pub user_password: Option<(String, String)>,
    pub token: Option<String>,
    /// A file holding an NKey seed.
    pub nkey: Option<PathBuf>,
    pub tls: bool,
    /// The CA that signed the server's certificate.
    pub ca: Option<PathBuf>,
    /// (certificate, key) for mutual TLS.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// Name shown in the server's connection list.
    pub client_name: String,
    /// Longest pause between reconnection attempts.
    pub max_reconnect_delay: Duration,
    /// How long to keep retrying the first connection (None: forever, as workers do).
    pub connect_timeout: Option<Duration>,
    /// Whether this client creates and updates the streams and buckets (the coordinator) or binds
    /// to them when they exist (every other worker, and the CLI). Either sets them up when they
    /// are missing and its permissions allow.
    pub owns_layout: bool,
    /// Replicas and size of the streams, when this client sets the layout up.
    pub stream_limits: crate::bus::StreamLimits,
}

impl BusOptions {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            urls: vec![url.into()],
            creds: None,
            user_password: None,
            token: None,
            nkey: None,
            tls: false,
            ca: None,
            client_cert: None,
            client_name: "embedfleet".into(),
            max_reconnect_delay: Duration::from_secs(5),
            connect_timeout: None,
            owns_layout: true,
            stream_limits: crate::bus::StreamLimits::default(),
        }
    }

    pub fn owns_layout(mut self, owns: bool) -> Self {
        self.owns_layout = owns;
        self
    }

    pub fn client_name(mut self, name: impl Into<String>) -> Self {
        self.client_name = name.into();
        self
    }

    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }

    /// The URLs as they may be shown: any user name, password or token in them replaced by `***`.
    pub fn shown_urls(&self) -> String {
        self.urls.iter().map(|u| redact_url(u)).collect::<Vec<_>>().join(",")
    }

    /// URLs that carry credentials are refused: async-nats would ignore them (so the connection
    /// would fail to authenticate for a reason nobody sees), and a URL is logged and stored in
    /// ConfigMaps. The error names the flag to use instead.
    pub fn check_urls(&self) -> Result<(), String> {
        for url in &self.urls {
            let Some((_, rest)) = url.split_once("://") else { continue };
            let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
            if let Some((userinfo, _)) = authority.rsplit_once('@') {
                let flags = if userinfo.contains(':') { "--nats-user and --nats-password" } else { "--nats-token (or --nats-user)" };
                return Err(format!(
                    "the NATS URL {} holds credentials, which are not used there and would be logged; pass them with {flags} \
                     (EMBEDFLEET_NATS_USER / _PASSWORD / _TOKEN), and give the URL without them",
                    redact_url(url)
                ));
            }
        }
        Ok(())
    }
}

/// `nats://user:secret@host:4222` → `nats://***@host:4222`; a URL without credentials unchanged.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..end].rsplit_once('@') {
        Some((_, host)) => format!("{scheme}://***@{host}{}", &rest[end..]),
        None => url.to_owned(),
    }
}

impl From<&NatsArgs> for BusOptions {
    fn from(a: &NatsArgs) -> Self {
        let mut o = BusOptions::new("");
        o.urls = a.nats_url.split(',').map(|u| u.trim().to_owned()).filter(|u| !u.is_empty()).collect();
        o.creds = a.nats_creds.clone();
        o.user_password = a.nats_user.clone().zip(a.nats_password.clone());
        o.token = a.nats_token.clone();
        o.nkey = a.nats_nkey.clone();
        o.ca = a.nats_ca.clone();
        o.client_cert = a.nats_client_cert.clone().zip(a.nats_client_key.clone());
        o.tls = a.nats_tls || o.ca.is_some() || o.client_cert.is_some();
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_urls_are_refused_and_never_shown() {
        let mut o = BusOptions::new("nats://alice:s3cret@nats:4222");
        let err = o.check_urls().unwrap_err();
        assert!(err.contains("--nats-user and --nats-password") && !err.contains("s3cret"), "{err}");
        o.urls = vec!["tls://tok3n@nats:4222/x".into()];
        let err = o.check_urls().unwrap_err();
        assert!(err.contains("--nats-token") && !err.contains("tok3n"), "{err}");
        assert_eq!(o.shown_urls(), "tls://***@nats:4222/x");
        o.urls = vec!["nats://nats:4222".into(), "nats://10.0.0.2:4222".into()];
        assert!(o.check_urls().is_ok());
        assert_eq!(o.shown_urls(), "nats://nats:4222,nats://10.0.0.2:4222");
    }
}
