#[warren::service(version = "one")]
pub trait Versionless {
    async fn ping(&self);
}

#[warren::service(topic = "t")]
pub trait Topicless {
    async fn ping(&self);
}

#[warren::service(topic = "t", version = "1.0", colour = "blue")]
pub trait Unknown {
    async fn ping(&self);
}

fn main() {}
