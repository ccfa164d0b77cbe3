#[warren::service(topic = "t", version = "1.0", derive(Clone, serde::Serialize))]
pub trait Service {
    async fn get_v2(&self) -> u32;
    async fn get_v_2(&self) -> u32;
}

fn main() {}
