#[warren::service(topic = "t", version = "1.0")]
pub trait Service {
    fn not_async(&self) -> u32;
    async fn by_value(self);
    async fn generic<T>(&self, t: T);
    const LIMIT: u32;
}

fn main() {}
