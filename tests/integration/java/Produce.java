// An app's Java producer (the broker's own kafka-clients): publishes lines "codec<TAB>key<TAB>value" from stdin to
// a topic, each codec's records through a producer of its own with that compression.type, acks=all, batched.
// Prints one line per codec: "<codec> <records sent> <compression-rate-avg>" (below 1 when batches were compressed).
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.Future;

import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.Metric;
import org.apache.kafka.common.MetricName;
import org.apache.kafka.common.serialization.StringSerializer;

public class Produce {
    public static void main(String[] args) throws Exception {
        String bootstrap = args[0];
        String topic = args[1];
        Map<String, List<String[]>> byCodec = new LinkedHashMap<>();
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        for (String line; (line = in.readLine()) != null; ) {
            if (line.isEmpty()) continue;
            String[] f = line.split("\t", 3);
            byCodec.computeIfAbsent(f[0], k -> new ArrayList<>()).add(f);
        }
        for (Map.Entry<String, List<String[]>> e : byCodec.entrySet()) {
            Properties p = new Properties();
            p.put("bootstrap.servers", bootstrap);
            p.put("compression.type", e.getKey());
            p.put("acks", "all");
            p.put("linger.ms", "50");
            p.put("batch.size", "262144");
            p.put("key.serializer", StringSerializer.class.getName());
            p.put("value.serializer", StringSerializer.class.getName());
            double rate;
            try (KafkaProducer<String, String> producer = new KafkaProducer<>(p)) {
                List<Future<RecordMetadata>> sent = new ArrayList<>();
                for (String[] f : e.getValue()) {
                    String key = f[1].isEmpty() ? null : f[1];
                    sent.add(producer.send(new ProducerRecord<>(topic, key, f[2])));
                }
                for (Future<RecordMetadata> s : sent) s.get();  // acknowledged, or this throws
                rate = Double.NaN;
                for (Map.Entry<MetricName, ? extends Metric> m : producer.metrics().entrySet()) {
                    if (m.getKey().name().equals("compression-rate-avg") && m.getKey().group().equals("producer-metrics")) {
                        rate = ((Number) m.getValue().metricValue()).doubleValue();
                    }
                }
            }
            System.out.println(e.getKey() + " " + e.getValue().size() + " " + rate);
        }
    }
}
