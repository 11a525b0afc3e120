//! How to reach NATS: flags and `EMBEDFLEET_NATS_*` variables, turned into async-nats options.

use clap::Args;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Args, Default)]
pub struct NatsArgs {
    /// NATS server URLs, comma-separated.
    #[arg(long, env = "EMBEDFLEET_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// A NATS credentials file (JWT + NKey).
    #[arg(long, env = "EMBEDFLEET_NATS_CREDS")]
    pub nats_creds: Option<PathBuf>,
    #[arg(long, env = "EMBEDFLEET_NATS_USER")]
    pub nats_user: Option<String>,
    #[arg(long, env = "EMBEDFLEET_NATS_PASSWORD", hide_env_values = true)]
    pub nats_password: Option<String>,
    /// Require TLS.
    #[arg(long, env = "EMBEDFLEET_NATS_TLS")]
    pub nats_tls: bool,
}

/// Connection settings, built from [`NatsArgs`] or by hand in tests.
#[derive(Debug, Clone)]
pub struct BusOptions {
    pub urls: Vec<String>,
    pub creds: Option<PathBuf>,
    pub user_password: Option<(String, String)>,
    pub tls: bool,
    /// Name shown in the server's connection list.
    pub client_name: String,
    /// Longest pause between reconnection attempts.
    pub max_reconnect_delay: Duration,
    /// How long to keep retrying the first connection (None: forever, as workers do).
    pub connect_timeout: Option<Duration>,
}

impl BusOptions {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            urls: vec![url.into()],
            creds: None,
            user_password: None,
            tls: false,
            client_name: "embedfleet".into(),
            max_reconnect_delay: Duration::from_secs(5),
            connect_timeout: None,
        }
    }

    pub fn client_name(mut self, name: impl Into<String>) -> Self {
        self.client_name = name.into();
        self
    }

    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }
}

impl From<&NatsArgs> for BusOptions {
    fn from(a: &NatsArgs) -> Self {
        let mut o = BusOptions::new("");
        o.urls = a.nats_url.split(',').map(|u| u.trim().to_owned()).filter(|u| !u.is_empty()).collect();
        o.creds = a.nats_creds.clone();
        o.user_password = a.nats_user.clone().zip(a.nats_password.clone());
        o.tls = a.nats_tls;
        o
    }
}
