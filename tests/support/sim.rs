//! `usage-sim` on `127.0.0.1:0`, accepting the test organization token, for tests that want
//! the simulator of the real API (real data, cursors, rate limit and fault modes) upstream.

use std::net::SocketAddr;

use serde_json::Value;
use tokio::sync::watch;
use usage_sim::{serve, SimOptions, Simulator};

use super::ORG_TOKEN;

pub struct Sim {
    pub addr: SocketAddr,
    pub sim: Simulator,
    _stop: watch::Sender<bool>,
}

impl Sim {
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

pub async fn start_sim(options: SimOptions) -> Sim {
    let sim = Simulator::new(SimOptions {
        keys: vec![ORG_TOKEN.to_owned()],
        ..options
    })
    .expect("valid simulator options");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, mut stopped) = watch::channel(false);
    let serving = sim.clone();
    tokio::spawn(async move {
        let shutdown = async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        };
        serve(serving, listener, shutdown)
            .await
            .expect("the simulator runs");
    });
    Sim {
        addr,
        sim,
        _stop: stop,
    }
}

/// A small data set: quick to generate, enough for every route.
pub fn small() -> SimOptions {
    SimOptions {
        sims: 12,
        tags: 3,
        hours: 24 * 10,
        ..SimOptions::default()
    }
}

/// `GET path` on the simulator itself (its control endpoints, or the API with the org token).
pub async fn sim_get(sim: &Sim, path: &str) -> super::Answer {
    let auth = ORG_TOKEN.to_owned();
    super::request(
        "GET",
        &format!("http://{}{path}", sim.addr),
        &[("authorization", &auth)],
    )
    .await
}

/// `GET path` on the simulator, as JSON.
pub async fn sim_json(sim: &Sim, path: &str) -> Value {
    sim_get(sim, path).await.json()
}

/// `POST /__sim/faults` with `update`; the simulator must accept it.
pub async fn set_faults(sim: &Sim, update: Value) {
    let answer = super::post_json(&format!("http://{}/__sim/faults", sim.addr), &update).await;
    assert_eq!(answer.status, 200, "fault update refused: {}", answer.body);
}
