//! `usage-gateway demo`: the simulator and the gateway in front of it, on loopback, with
//! freshly generated keys, so a new user sees the whole thing work with one command. Built with
//! the default `demo` feature only: a production build leaves the simulator out.

use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Config;
use usage_sim::{SimOptions, Simulator};

/// A running demo: the simulator on an ephemeral port and the gateway on `listen`.
#[derive(Debug)]
pub struct Demo {
    gateway: SocketAddr,
    admin: SocketAddr,
    upstream: SocketAddr,
    caller_key: String,
    sim_id: String,
    iccid: String,
    tag_id: String,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot listen on {address}: {source}")]
    Listen {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot generate a key: {0}")]
    Random(getrandom::Error),
    #[error("the simulator could not start: {0}")]
    Simulator(#[from] usage_sim::SimError),
    #[error("the demo configuration is invalid: {0}")]
    Config(#[from] crate::config::ConfigError),
}

/// A random 128-bit key, hex-encoded, with a recognizable prefix.
fn generate_key(prefix: &str) -> Result<String, DemoError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(DemoError::Random)?;
    Ok(format!("{prefix}{}", hex::encode(bytes)))
}

async fn bind(address: SocketAddr) -> Result<TcpListener, DemoError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| DemoError::Listen { address, source })
}

impl Demo {
    /// Starts the simulator on `127.0.0.1:0` and the gateway on `listen`.
    pub async fn start(listen: SocketAddr) -> Result<Demo, DemoError> {
        let org_token = generate_key("demo-org-")?;
        let caller_key = generate_key("demo-caller-")?;

        let options = SimOptions {
            keys: vec![org_token.clone()],
            // Real time for the simulated API's rate limit, so its x-ratelimit-reset is a real
            // instant the gateway can pace itself by.
            live_clock: true,
            ..SimOptions::default()
        };
        let simulator = Simulator::new(options)?;
        let sim_id = simulator.sim_ids().into_iter().next().unwrap_or_default();
        let iccid = simulator.iccids().into_iter().nth(1).unwrap_or_default();
        let tag_id = simulator.tag_ids().into_iter().next().unwrap_or_default();
        let sim_listener = bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let upstream = local_addr(&sim_listener, listen)?;

        let config = Config::from_toml(&format!(
            r#"
            [server]
            listen = "{listen}"
            [upstream]
            base_url = "http://{upstream}"
            token = "{org_token}"
            [[callers]]
            name = "demo"
            key = "{caller_key}"
            "#
        ))?;
        let gateway_listener = bind(listen).await?;
        let gateway = local_addr(&gateway_listener, listen)?;
        let admin_wanted = SocketAddr::new(listen.ip(), 0);
        let admin_listener = bind(admin_wanted).await?;
        let admin = local_addr(&admin_listener, admin_wanted)?;

        let (stop, stopped) = watch::channel(false);
        let until_stopped = |mut stopped: watch::Receiver<bool>| async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        };
        let sim_task = tokio::spawn({
            let stopped = until_stopped(stopped.clone());
            async move {
                if let Err(error) = usage_sim::serve(simulator, sim_listener, stopped).await {
                    tracing::error!(%error, "the simulator stopped");
                }
            }
        });
        let gateway_task = tokio::spawn({
            let stopped = until_stopped(stopped);
            async move {
                let listeners = crate::Listeners {
                    api: gateway_listener,
                    admin: Some(admin_listener),
                };
                let (_no_reloads, reloads) = crate::reload::channel();
                if let Err(error) = crate::serve(config, listeners, stopped, reloads).await {
                    tracing::error!(%error, "the gateway stopped");
                }
            }
        });
        Ok(Demo {
            gateway,
            admin,
            upstream,
            caller_key,
            sim_id,
            iccid,
            tag_id,
            stop,
            tasks: vec![sim_task, gateway_task],
        })
    }

    pub fn gateway_addr(&self) -> SocketAddr {
        self.gateway
    }

    /// The admin listener: status page, metrics, health.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// The generated caller key: printed for the user, as the demo's point is to try it.
    pub fn caller_key(&self) -> &str {
        &self.caller_key
    }

    /// What to paste into a terminal next.
    pub fn instructions(&self) -> String {
        let base = format!("http://{}", self.gateway);
        let auth = format!("-H 'Authorization: Bearer {}'", self.caller_key);
        format!(
            "usage-gateway demo is running\n\
             \n  gateway    {base}  (caller key {key})\
             \n  status     http://{admin}/  (status page; metrics at /metrics)\
             \n  upstream   usage-sim on http://{upstream} (a simulated Onomondo API; its token stays inside the gateway)\
             \n\
             \nTry these (run the first one twice: the second answer comes from the cache):\
             \n\
             \n  curl -gsi {auth} '{base}/usage?limit=2'\
             \n  curl -gs  {auth} '{base}/usage?filter[]=country_code:DK&filter[]=time:2024-02&limit=3'\
             \n  curl -gs  {auth} '{base}/usage/{sim}?filter=time:2024-03-01&group=hours&limit=5'\
             \n  curl -gs  {auth} '{base}/usage/{iccid}?filter=time:2024-03-01&limit=5'   # by ICCID\
             \n  curl -gs  {auth} '{base}/usage/tag-total/{tag}?filter=time:2024-03&group=hours&limit=5'\
             \n  curl -gs  {auth} '{base}/usage?limit=5000'      # a 400 naming the problem\
             \n  curl -gs  '{base}/usage'                          # a 401: no key\
             \n\
             \nPress Ctrl-C to stop.",
            key = self.caller_key,
            upstream = self.upstream,
            admin = self.admin,
            sim = self.sim_id,
            iccid = self.iccid,
            tag = self.tag_id,
        )
    }

    /// Stops both servers and waits for them to drain.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

fn local_addr(listener: &TcpListener, wanted: SocketAddr) -> Result<SocketAddr, DemoError> {
    listener.local_addr().map_err(|source| DemoError::Listen {
        address: wanted,
        source,
    })
}
