//! The shielding workload, shared by the `shield` and `replicas` examples: the questions
//! internal services ask (a Zipf popularity over a seeded shuffle, in three spellings), drawn
//! from a deterministic generator so every run asks the same questions.
#![allow(dead_code)] // each example uses a different part

pub const CALLERS: [&str; 6] = [
    "billing",
    "dashboards",
    "alerting",
    "support",
    "reports",
    "ops",
];
pub const WORKERS_PER_CALLER: usize = 4;
pub const THINK_TIME: std::time::Duration = std::time::Duration::from_millis(15);
pub const BURST_EVERY: std::time::Duration = std::time::Duration::from_secs(15);
pub const BURST_SIZE: usize = 300;
pub const ZIPF_S: f64 = 1.1;

/// splitmix64: a tiny deterministic generator, so every run asks the same questions.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The questions internal services ask, most popular first after a seeded shuffle.
pub fn question_space(sim_ids: &[String], tag_ids: &[String]) -> Vec<String> {
    let mut questions = Vec::new();
    for sim in sim_ids {
        for month in 1..=3 {
            questions.push(format!(
                "/usage/{sim}?filter=time:2024-{month:02}&limit=100"
            ));
        }
    }
    for country in ["dk", "de", "se", "gb", "nl", "us", "fr", "es"] {
        for month in 1..=3 {
            questions.push(format!(
                "/usage?filter[]=country_code:{country}&filter[]=time:2024-{month:02}&limit=100"
            ));
        }
    }
    for tag in tag_ids {
        questions.push(format!("/usage/tag-total/{tag}"));
    }
    for sim in sim_ids.iter().take(100) {
        questions.push(format!("/usage/{sim}?limit=10"));
    }
    for page in 0..20 {
        questions.push(format!("/usage?limit=100&offset={}", page * 100));
    }
    let mut rng = Rng(7);
    for i in (1..questions.len()).rev() {
        let j = (rng.next() % (i as u64 + 1)) as usize;
        questions.swap(i, j);
    }
    questions
}

/// Another spelling of the same question, as different services write it.
pub fn respell(question: &str, rng: &mut Rng) -> String {
    match rng.next() % 3 {
        0 => question.to_owned(),
        1 => question
            .replace("filter[]=", "filter=")
            .replace("time:", "TIME:"),
        _ => question
            .replace("filter=", "filter%5B%5D=")
            .replace("country_code:", "Country_Code:"),
    }
}

pub struct Zipf {
    cumulative: Vec<f64>,
}

impl Zipf {
    pub fn new(n: usize, s: f64) -> Self {
        let mut total = 0.0;
        let cumulative = (1..=n)
            .map(|rank| {
                total += 1.0 / (rank as f64).powf(s);
                total
            })
            .collect::<Vec<_>>();
        Self {
            cumulative: cumulative.iter().map(|c| c / total).collect(),
        }
    }

    pub fn sample(&self, rng: &mut Rng) -> usize {
        let u = rng.unit();
        self.cumulative
            .partition_point(|&c| c < u)
            .min(self.cumulative.len() - 1)
    }
}
