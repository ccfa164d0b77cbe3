#[warren::service(topic = "t", version = "1.0")]
pub trait Service {
    async fn ping<T: serde::Serialize>(&self, value: T) -> u32;
}

fn main() {}
