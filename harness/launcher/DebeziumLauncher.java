/*
 * DebeziumLauncher - runs the Debezium Postgres connector in the embedded (async) engine
 * and produces every change event to a Kafka-API broker, at-least-once.
 *
 * Usage: java -cp <classpath> DebeziumLauncher.java <path/to/launcher.properties>
 *
 * Properties:
 *   debezium.*  -> embedded engine / connector config (prefix stripped)
 *   kafka.*     -> KafkaProducer<String,String> config (prefix stripped)
 *   launcher.*  -> this program: status.port, status.address (default loopback; a
 *                  container publishing the port needs 0.0.0.0), status.file, log.level
 * A value written exactly as ${env:NAME} is replaced by the environment variable NAME.
 *
 * Exit codes: 0 = clean stop (SIGTERM/SIGINT, or engine finished normally),
 *             1 = engine/connector/producer failure (cause is logged),
 *             2 = usage / launcher configuration error.
 *
 * Trace context: a transaction that starts with
 *   SELECT pg_logical_emit_message(true, 'traceparent', '<W3C traceparent>')
 * gets that value as a `traceparent` Kafka header on every change event it produced; the
 * message event itself is consumed here (it has no topic of its own on the broker).
 *
 * See README.md next to this file.
 */

import com.sun.net.httpserver.HttpExchange;
import com.sun.net.httpserver.HttpServer;

import io.debezium.engine.ChangeEvent;
import io.debezium.engine.DebeziumEngine;
import io.debezium.engine.format.Json;

import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.header.internals.RecordHeaders;
import org.apache.kafka.common.serialization.StringSerializer;
import org.apache.kafka.connect.errors.ConnectException;
import org.apache.kafka.connect.runtime.WorkerConfig;
import org.apache.kafka.connect.storage.FileOffsetBackingStore;
import io.debezium.embedded.KafkaConnectUtil;

import org.apache.logging.log4j.Level;
import org.apache.logging.log4j.core.appender.ConsoleAppender;
import org.apache.logging.log4j.core.config.Configurator;
import org.apache.logging.log4j.core.config.builder.api.AppenderComponentBuilder;
import org.apache.logging.log4j.core.config.builder.api.ConfigurationBuilder;
import org.apache.logging.log4j.core.config.builder.api.ConfigurationBuilderFactory;
import org.apache.logging.log4j.core.config.builder.impl.BuiltConfiguration;

import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

import javax.management.MBeanServer;
import javax.management.ObjectName;
import java.io.IOException;
import java.io.InputStream;
import java.io.ObjectOutputStream;
import java.io.OutputStream;
import java.nio.ByteBuffer;
import java.nio.channels.Channels;
import java.nio.channels.FileChannel;
import java.nio.file.StandardOpenOption;
import java.util.HashMap;
import java.lang.management.ManagementFactory;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.nio.file.StandardCopyOption;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Base64;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.Set;
import java.util.TreeMap;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicLong;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

public class DebeziumLauncher {

    static final int EXIT_OK = 0;
    static final int EXIT_FAILURE = 1;
    static final int EXIT_USAGE = 2;

    // Logger is created only after log4j2 has been configured programmatically.
    static Logger log;

    // ---- shared state (read by the status endpoint) ----
    static final AtomicLong recordsSent = new AtomicLong();
    static final AtomicLong tracedRecords = new AtomicLong();
    static final AtomicLong batchesCommitted = new AtomicLong();
    static volatile String lastError = null;
    static volatile boolean engineFailed = false;
    static volatile boolean engineFinished = false;
    static volatile boolean pollingStarted = false;
    static volatile boolean shuttingDown = false;
    static final long startNanos = System.nanoTime();
    static volatile long snapshotCompletedAfterMs = -1;
    static final CountDownLatch engineDone = new CountDownLatch(1);
    static final AtomicBoolean exitingFromMain = new AtomicBoolean(false);

    static String topicPrefix = "";
    static volatile KafkaProducer<String, String> producer;
    /** Producer settings, kept to build a fresh producer after a failed batch. */
    static volatile Properties kafkaProps;
    /** How long a batch is re-sent (fresh producer, backoff) before the launcher gives up. */
    static final long SEND_RETRY_MS = 120_000;
    static volatile DebeziumEngine<ChangeEvent<String, String>> engine;
    static HttpServer statusServer;

    public static void main(String[] args) {
        configureLogging(System.getProperty("launcher.log.level", "INFO"));
        log = LoggerFactory.getLogger("DebeziumLauncher");

        if (args.length != 1) {
            System.err.println("usage: java -cp <classpath> DebeziumLauncher.java <launcher.properties>");
            exitFromMain(EXIT_USAGE);
        }

        Properties debezium = new Properties();
        Properties kafka = new Properties();
        Properties launcher = new Properties();
        try {
            loadAndSplit(Paths.get(args[0]), debezium, kafka, launcher);
        }
        catch (Exception e) {
            log.error("Invalid launcher configuration {}: {}", args[0], e.getMessage());
            exitFromMain(EXIT_USAGE);
        }
        String level = launcher.getProperty("log.level");
        if (level != null) {
            Configurator.setRootLevel(Level.toLevel(level, Level.INFO));
        }

        applyDebeziumDefaults(debezium);
        applyProducerDefaults(kafka);
        topicPrefix = debezium.getProperty("topic.prefix", "");
        logConfig("debezium.", debezium);
        logConfig("kafka.", kafka);
        logConfig("launcher.", launcher);

        if (AtomicFileOffsetBackingStore.class.getName().equals(debezium.getProperty("offset.storage"))
                && debezium.getProperty("offset.storage.file.filename", "").isBlank()) {
            log.error("debezium.offset.storage.file.filename is required with FileOffsetBackingStore");
            exitFromMain(EXIT_USAGE);
        }

        // SIGTERM/SIGINT: stop engine (commits processed offsets), then flush+close the producer.
        Runtime.getRuntime().addShutdownHook(new Thread(DebeziumLauncher::onSignalShutdown, "launcher-shutdown"));

        // ---- status endpoint first, so the supervisor can see "starting" ----
        try {
            int port = Integer.parseInt(launcher.getProperty("status.port", "0").trim());
            startStatusServer(launcher.getProperty("status.address"), port, launcher.getProperty("status.file"));
        }
        catch (Exception e) {
            log.error("Cannot start status endpoint: {}", e.toString());
            exitFromMain(EXIT_USAGE);
        }

        // ---- producer ----
        try {
            kafkaProps = kafka;
            producer = new KafkaProducer<>(kafka, new StringSerializer(), new StringSerializer());
        }
        catch (Exception e) {
            log.error("Cannot create Kafka producer: {}", e.toString());
            exitFromMain(EXIT_USAGE);
        }

        // ---- engine ----
        try {
            engine = DebeziumEngine.create(Json.class)
                    .using(debezium)
                    // our class loader (source-file mode) so that the engine can instantiate
                    // DebeziumLauncher$AtomicFileOffsetBackingStore by name; it delegates to the classpath
                    .using(DebeziumLauncher.class.getClassLoader())
                    .using(new DebeziumEngine.ConnectorCallback() {
                        @Override
                        public void pollingStarted() {
                            pollingStarted = true;
                            log.info("Launcher: engine polling started");
                        }
                    })
                    .using((boolean success, String message, Throwable error) -> {
                        if (!success) {
                            engineFailed = true;
                            Throwable root = error;
                            lastError = (message != null ? message : "engine failed")
                                    + (root != null ? " :: " + describe(root) : "");
                            log.error("Launcher: engine FAILED: {}", lastError, error);
                        }
                        else {
                            log.info("Launcher: engine completed: {}", message);
                        }
                        engineFinished = true;
                        engineDone.countDown();
                    })
                    .notifying(new ProducingChangeConsumer())
                    .build();
        }
        catch (Exception e) {
            lastError = describe(e);
            engineFailed = true;
            log.error("Launcher: cannot build Debezium engine: {}", lastError, e);
            closeProducer();
            exitFromMain(EXIT_FAILURE);
        }


        Thread engineThread = new Thread(engine, "debezium-engine");
        engineThread.start();
        startMonitor();

        // Wait for the engine to finish (failure, or stop triggered by the shutdown hook).
        try {
            engineDone.await();
        }
        catch (InterruptedException ignored) {
            Thread.currentThread().interrupt();
        }
        if (shuttingDown) {
            // The shutdown hook owns the rest of the shutdown (and the exit code).
            return;
        }
        closeProducer();
        stopStatusServer();
        int code = engineFailed ? EXIT_FAILURE : EXIT_OK;
        log.info("Launcher: exiting with code {}", code);
        flushLogs();
        exitFromMain(code);
    }

    // =====================================================================================
    // Change consumer: send whole batch, wait for broker acks, only then mark processed.
    // =====================================================================================
    static final class ProducingChangeConsumer implements DebeziumEngine.ChangeConsumer<ChangeEvent<String, String>> {
        @Override
        public void handleBatch(List<ChangeEvent<String, String>> records,
                                DebeziumEngine.RecordCommitter<ChangeEvent<String, String>> committer)
                throws InterruptedException {
            // A broker that is restarting answers with errors the producer treats as fatal
            // (tansu: UnknownServerException while its storage shuts down). Nothing of the
            // batch is committed yet, so re-sending it whole with a fresh producer is safe
            // (at-least-once: duplicates possible, loss not); only past SEND_RETRY_MS does
            // the launcher give up and exit non-zero.
            // Built once: a re-send must not walk the transaction-trace state again.
            List<ProducerRecord<String, String>> outgoing = toProducerRecords(records);
            long deadline = System.currentTimeMillis() + SEND_RETRY_MS;
            long backoff = 250;
            while (true) {
                KafkaProducer<String, String> p = producer;
                if (p == null || shuttingDown) {
                    throw new InterruptedException("producer closed (shutting down)");
                }
                Throwable failure;
                try {
                    sendAll(p, outgoing);
                    break;
                }
                catch (InterruptedException e) {
                    // engine shutdown while waiting: nothing of this batch is marked, it will be re-sent on restart
                    throw e;
                }
                catch (ExecutionException e) {
                    failure = e.getCause() != null ? e.getCause() : e;
                }
                catch (RuntimeException e) {
                    failure = e;
                }
                if (System.currentTimeMillis() + backoff > deadline) {
                    throw sendFailed(records.size(), failure);
                }
                lastError = "re-sending a batch after: " + describe(failure);
                log.warn("Launcher: batch of {} record(s) not acknowledged ({}); re-sending in {} ms with a fresh producer",
                        records.size(), describe(failure), backoff);
                Thread.sleep(backoff);
                backoff = Math.min(backoff * 2, 5_000);
                replaceProducer(p);
            }
            // Everything in this batch is durable on the broker -> commit it.
            for (ChangeEvent<String, String> r : records) {
                committer.markProcessed(r);
            }
            committer.markBatchFinished();
            recordsSent.addAndGet(outgoing.size());
            batchesCommitted.incrementAndGet();
        }

        /** The batch as producer records: trace messages left out, trace headers added. */
        private static List<ProducerRecord<String, String>> toProducerRecords(List<ChangeEvent<String, String>> records) {
            List<ProducerRecord<String, String>> outgoing = new ArrayList<>(records.size());
            for (ChangeEvent<String, String> r : records) {
                String traceparent = TRACES.traceparentFor(r.value());
                if (traceparent == TransactionTraces.CONSUMED) {
                    continue;
                }
                RecordHeaders headers = new RecordHeaders();
                if (traceparent != null) {
                    headers.add("traceparent", traceparent.getBytes(StandardCharsets.UTF_8));
                    tracedRecords.incrementAndGet();
                }
                // partition left to the producer's partitioner (murmur2 of the key) so that
                // all events of one row land in the same partition, in order.
                outgoing.add(new ProducerRecord<>(r.destination(), null, r.key(), r.value(), headers));
            }
            return outgoing;
        }

        private static void sendAll(KafkaProducer<String, String> p, List<ProducerRecord<String, String>> records)
                throws InterruptedException, ExecutionException {
            List<Future<RecordMetadata>> acks = new ArrayList<>(records.size());
            for (ProducerRecord<String, String> r : records) {
                acks.add(p.send(r));
            }
            for (Future<RecordMetadata> f : acks) {
                f.get(); // blocks until acks=all acknowledged, or delivery.timeout.ms expired
            }
        }

        /** Swaps in a new producer: one that saw a fatal error may refuse every later send. */
        private static synchronized void replaceProducer(KafkaProducer<String, String> failed) {
            if (producer != failed || shuttingDown) {
                return;
            }
            producer = new KafkaProducer<>(kafkaProps, new StringSerializer(), new StringSerializer());
            try {
                failed.close(Duration.ZERO);
            }
            catch (Exception e) {
                log.warn("Launcher: closing the failed producer: {}", describe(e));
            }
        }

        @Override
        public boolean supportsTombstoneEvents() {
            return true;
        }
    }

    static final TransactionTraces TRACES = new TransactionTraces();

    /**
     * The W3C trace context of the transaction being streamed. pgoutput streams committed
     * transactions one after another, never interleaved, so "the last trace message seen and
     * its txId" is all the state needed. Values are matched textually: the JSON converter
     * escapes quotes inside strings, so `"txId":` only matches the source block's key.
     */
    static final class TransactionTraces {
        static final String CONSUMED = new String("consumed");
        private static final Pattern TX_ID = Pattern.compile("\"txId\":(\\d+)");
        private static final Pattern TRACE_MESSAGE =
                Pattern.compile("\"message\":\\{\"prefix\":\"traceparent\",\"content\":\"([A-Za-z0-9+/=]*)\"");
        private static final Pattern VALID = Pattern.compile("^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$");
        private String txId;
        private String traceparent;

        /** CONSUMED for a trace message, the transaction's traceparent, or null. */
        synchronized String traceparentFor(String value) {
            if (value == null) {
                return null; // tombstone: it follows its delete, which carried the header
            }
            boolean message = value.contains("\"op\":\"m\"");
            if (!message && traceparent == null) {
                return null;
            }
            Matcher tx = TX_ID.matcher(value);
            String id = tx.find() ? tx.group(1) : null;
            if (message) {
                Matcher m = TRACE_MESSAGE.matcher(value);
                if (!m.find()) {
                    return null; // another application's message: produced as it is
                }
                String decoded = new String(Base64.getDecoder().decode(m.group(1)), StandardCharsets.UTF_8).trim();
                if (id != null && VALID.matcher(decoded).matches()) {
                    txId = id;
                    traceparent = decoded;
                }
                return CONSUMED;
            }
            if (id == null || !id.equals(txId)) {
                txId = null;
                traceparent = null;
                return null;
            }
            return traceparent;
        }
    }

    /** Non-retriable on purpose: the async engine retries (and skips!) batches only on Connect RetriableException. */
    static final class SendFailedException extends RuntimeException {
        SendFailedException(String msg, Throwable cause) {
            super(msg, cause);
        }
    }

    static SendFailedException sendFailed(int n, Throwable cause) {
        String msg = "Kafka produce failed for a batch of " + n + " record(s); batch NOT committed: " + describe(cause);
        lastError = msg;
        log.error("Launcher: {}", msg);
        return new SendFailedException(msg, cause);
    }

    /** FileOffsetBackingStore whose save() is crash-safe: temp file + fsync + atomic rename (+ dir fsync). */
    public static class AtomicFileOffsetBackingStore extends FileOffsetBackingStore {
        private Path path;

        public AtomicFileOffsetBackingStore() {
            super(KafkaConnectUtil.converterForOffsetStore());
        }

        @Override
        public void configure(WorkerConfig config) {
            super.configure(config);
            path = Paths.get(config.getString("offset.storage.file.filename")).toAbsolutePath();
        }

        @Override
        protected void save() {
            try {
                Map<byte[], byte[]> raw = new HashMap<>();
                for (Map.Entry<ByteBuffer, ByteBuffer> e : data.entrySet()) {
                    raw.put(e.getKey() != null ? e.getKey().array() : null, e.getValue() != null ? e.getValue().array() : null);
                }
                Path tmp = path.resolveSibling(path.getFileName() + ".tmp");
                try (FileChannel ch = FileChannel.open(tmp, StandardOpenOption.CREATE, StandardOpenOption.WRITE,
                        StandardOpenOption.TRUNCATE_EXISTING)) {
                    ObjectOutputStream os = new ObjectOutputStream(Channels.newOutputStream(ch));
                    os.writeObject(raw);
                    os.flush();
                    ch.force(true);
                }
                Files.move(tmp, path, StandardCopyOption.ATOMIC_MOVE, StandardCopyOption.REPLACE_EXISTING);
                try (FileChannel dir = FileChannel.open(path.getParent(), StandardOpenOption.READ)) {
                    dir.force(true);
                }
                catch (IOException ignored) {
                    // directory fsync is best effort
                }
            }
            catch (IOException e) {
                throw new ConnectException("Cannot save offsets to " + path, e);
            }
        }
    }

    // =====================================================================================
    // Shutdown
    // =====================================================================================
    static void exitFromMain(int code) {
        exitingFromMain.set(true); // our shutdown hook must not override the exit code
        flushLogs();
        System.exit(code);
    }

    static void onSignalShutdown() {
        if (exitingFromMain.get()) {
            return; // System.exit from main: everything is already closed
        }
        shuttingDown = true;
        log.info("Launcher: shutdown requested (signal), stopping engine");
        if (engine == null) {
            closeProducer();
            flushLogs();
            Runtime.getRuntime().halt(EXIT_OK);
        }
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(60);
        boolean closed = false;
        while (!closed && !engineFinished && System.nanoTime() < deadline) {
            try {
                engine.close(); // stops tasks, commits offsets of records marked processed
                closed = true;
            }
            catch (IllegalStateException e) {
                // "tasks are starting" (retry shortly) or "already stopping/stopped" (just wait)
                String m = String.valueOf(e.getMessage());
                if (m.contains("already")) {
                    closed = true;
                }
                else {
                    sleepQuietly(100);
                }
            }
            catch (Exception e) {
                log.warn("Launcher: error while closing engine: {}", describe(e));
                closed = true;
            }
        }
        try {
            engineDone.await(30, TimeUnit.SECONDS);
        }
        catch (InterruptedException ignored) {
        }
        closeProducer();
        stopStatusServer();
        int code = engineFailed ? EXIT_FAILURE : EXIT_OK;
        log.info("Launcher: stopped (signal), exit code {}", code);
        flushLogs();
        // log4j's own shutdown hook is disabled (see configureLogging), so logging worked until here.
        Runtime.getRuntime().halt(code);
    }

    /**
     * close(timeout) waits up to the timeout for in-flight sends, then aborts them. Nothing un-acked was
     * committed (markProcessed only after the ack), so abandoning them loses nothing; a bounded wait
     * keeps SIGTERM fast even when the broker is down.
     */
    static void closeProducer() {
        KafkaProducer<String, String> p = producer;
        if (p == null) {
            return;
        }
        producer = null;
        try {
            p.close(Duration.ofSeconds(10));
        }
        catch (Exception e) {
            log.warn("Launcher: producer close failed: {}", describe(e));
        }
    }

    // =====================================================================================
    // Status endpoint
    // =====================================================================================
    static void startStatusServer(String address, int port, String statusFile) throws IOException {
        InetAddress bind = address == null || address.isBlank() ? InetAddress.getLoopbackAddress() : InetAddress.getByName(address.trim());
        statusServer = HttpServer.create(new InetSocketAddress(bind, port), 16);
        statusServer.setExecutor(Executors.newSingleThreadExecutor(r -> {
            Thread t = new Thread(r, "launcher-status-http");
            t.setDaemon(true);
            return t;
        }));
        statusServer.createContext("/status", ex -> respond(ex, 200, statusJson()));
        statusServer.createContext("/healthz", ex -> {
            boolean ok = !engineFailed && !engineFinished && !shuttingDown;
            respond(ex, ok ? 200 : 503, ok ? "{\"ok\":true}" : "{\"ok\":false}");
        });
        statusServer.createContext("/mbeans", ex -> respond(ex, 200, mbeansJson()));
        statusServer.start();
        int actual = statusServer.getAddress().getPort();
        System.out.println("LAUNCHER_STATUS_PORT=" + actual);
        System.out.flush();
        log.info("Launcher: status endpoint on http://127.0.0.1:{}/status", actual);
        if (statusFile != null && !statusFile.isBlank()) {
            Path target = Paths.get(statusFile);
            Path tmp = target.resolveSibling(target.getFileName() + ".tmp");
            Files.writeString(tmp, actual + "\n", StandardCharsets.UTF_8);
            Files.move(tmp, target, StandardCopyOption.REPLACE_EXISTING, StandardCopyOption.ATOMIC_MOVE);
        }
    }

    static void stopStatusServer() {
        if (statusServer != null) {
            statusServer.stop(0);
        }
    }

    static void respond(HttpExchange ex, int code, String body) throws IOException {
        if (!"GET".equalsIgnoreCase(ex.getRequestMethod())) {
            code = 405;
            body = "{\"error\":\"method not allowed\"}";
        }
        byte[] bytes = body.getBytes(StandardCharsets.UTF_8);
        ex.getResponseHeaders().set("Content-Type", "application/json");
        ex.sendResponseHeaders(code, bytes.length);
        try (OutputStream os = ex.getResponseBody()) {
            os.write(bytes);
        }
    }

    // Sticky observations (MBeans disappear when the engine stops).
    static volatile boolean snapshotCompletedSeen = false;
    static volatile String lastLoggedState = "";

    static synchronized String computeState(boolean[] flags) {
        Boolean snapCompleted = mbeanBool("snapshot", "SnapshotCompleted");
        Boolean snapRunning = mbeanBool("snapshot", "SnapshotRunning");
        Boolean snapSkipped = mbeanBool("snapshot", "SnapshotSkipped");
        Boolean connected = mbeanBool("streaming", "Connected");
        if (Boolean.TRUE.equals(snapCompleted) && !snapshotCompletedSeen) {
            snapshotCompletedSeen = true;
            snapshotCompletedAfterMs = (System.nanoTime() - startNanos) / 1_000_000;
            log.info("Launcher: snapshot completed ({} ms after launch)", snapshotCompletedAfterMs);
        }
        boolean streaming = Boolean.TRUE.equals(connected);
        String state;
        if (engineFailed) {
            state = "failed";
        }
        else if (engineFinished || shuttingDown) {
            state = "stopped";
        }
        else if (streaming) {
            state = "streaming";
        }
        else if (Boolean.TRUE.equals(snapRunning) || (snapshotCompletedSeen && !Boolean.TRUE.equals(connected))) {
            // (snapshot finished, streaming not connected yet: still the snapshot phase)
            state = "snapshotting";
        }
        else {
            state = "starting";
        }
        if (!state.equals(lastLoggedState)) {
            log.info("Launcher: state {} -> {} ({} ms after launch, snapshot_completed={}, streaming_connected={})",
                    lastLoggedState.isEmpty() ? "-" : lastLoggedState, state,
                    (System.nanoTime() - startNanos) / 1_000_000, snapshotCompletedSeen, streaming);
            lastLoggedState = state;
        }
        flags[0] = Boolean.TRUE.equals(snapRunning);
        flags[1] = Boolean.TRUE.equals(snapSkipped);
        flags[2] = streaming;
        return state;
    }

    static String statusJson() {
        boolean[] flags = new boolean[3];
        String state = computeState(flags);
        StringBuilder sb = new StringBuilder(256);
        sb.append('{');
        sb.append("\"state\":\"").append(state).append("\",");
        sb.append("\"snapshot_completed\":").append(snapshotCompletedSeen).append(',');
        sb.append("\"snapshot_running\":").append(flags[0]).append(',');
        sb.append("\"snapshot_skipped\":").append(flags[1]).append(',');
        sb.append("\"streaming_connected\":").append(flags[2]).append(',');
        sb.append("\"records_sent\":").append(recordsSent.get()).append(',');
        sb.append("\"records_traced\":").append(tracedRecords.get()).append(',');
        sb.append("\"batches_committed\":").append(batchesCommitted.get()).append(',');
        sb.append("\"uptime_ms\":").append((System.nanoTime() - startNanos) / 1_000_000).append(',');
        sb.append("\"last_error\":").append(lastError == null ? "null" : jsonString(lastError));
        sb.append('}');
        return sb.toString();
    }

    /** Polls the MBeans every 200 ms so that state transitions are logged even if nobody asks. */
    static void startMonitor() {
        Thread t = new Thread(() -> {
            boolean[] flags = new boolean[3];
            while (!engineFinished) {
                try {
                    computeState(flags);
                }
                catch (Exception ignored) {
                }
                sleepQuietly(200);
            }
        }, "launcher-monitor");
        t.setDaemon(true);
        t.start();
    }

    /** Reads a boolean attribute of debezium.postgres:type=connector-metrics,context=CTX,server=PREFIX[,...]. */
    static Boolean mbeanBool(String context, String attribute) {
        try {
            MBeanServer mbs = ManagementFactory.getPlatformMBeanServer();
            Set<ObjectName> names = mbs.queryNames(
                    new ObjectName("debezium.postgres:type=connector-metrics,context=" + context + ",*"), null);
            for (ObjectName n : names) {
                if (topicPrefix.equals(n.getKeyProperty("server"))) {
                    Object v = mbs.getAttribute(n, attribute);
                    if (v instanceof Boolean) {
                        return (Boolean) v;
                    }
                }
            }
        }
        catch (Exception e) {
            // MBean not registered yet / being unregistered
        }
        return null;
    }

    static String mbeansJson() {
        StringBuilder sb = new StringBuilder("[");
        try {
            Set<ObjectName> names = ManagementFactory.getPlatformMBeanServer().queryNames(new ObjectName("debezium*:*"), null);
            boolean first = true;
            for (ObjectName n : names) {
                if (!first) {
                    sb.append(',');
                }
                first = false;
                sb.append(jsonString(n.toString()));
            }
        }
        catch (Exception e) {
            // ignore
        }
        return sb.append(']').toString();
    }

    static String jsonString(String s) {
        StringBuilder sb = new StringBuilder(s.length() + 2).append('"');
        for (int i = 0; i < s.length(); i++) {
            char c = s.charAt(i);
            switch (c) {
                case '"': sb.append("\\\""); break;
                case '\\': sb.append("\\\\"); break;
                case '\n': sb.append("\\n"); break;
                case '\r': sb.append("\\r"); break;
                case '\t': sb.append("\\t"); break;
                default:
                    if (c < 0x20) {
                        sb.append(String.format("\\u%04x", (int) c));
                    }
                    else {
                        sb.append(c);
                    }
            }
        }
        return sb.append('"').toString();
    }

    // =====================================================================================
    // Configuration
    // =====================================================================================
    static final String FILE_STORE = "org.apache.kafka.connect.storage.FileOffsetBackingStore";
    static final Pattern ENV_REF = Pattern.compile("^\\$\\{env:([A-Za-z_][A-Za-z0-9_]*)\\}$");

    static void loadAndSplit(Path file, Properties debezium, Properties kafka, Properties launcher) throws IOException {
        Properties all = new Properties();
        try (InputStream in = Files.newInputStream(file)) {
            all.load(in);
        }
        List<String> unknown = new ArrayList<>();
        for (String key : all.stringPropertyNames()) {
            String value = all.getProperty(key).trim();
            Matcher m = ENV_REF.matcher(value);
            if (m.matches()) {
                String env = System.getenv(m.group(1));
                if (env == null) {
                    throw new IOException("environment variable " + m.group(1) + " (referenced by " + key + ") is not set");
                }
                value = env;
            }
            if (key.startsWith("debezium.")) {
                debezium.setProperty(key.substring("debezium.".length()), value);
            }
            else if (key.startsWith("kafka.")) {
                kafka.setProperty(key.substring("kafka.".length()), value);
            }
            else if (key.startsWith("launcher.")) {
                launcher.setProperty(key.substring("launcher.".length()), value);
            }
            else {
                unknown.add(key);
            }
        }
        if (!unknown.isEmpty()) {
            throw new IOException("keys without debezium./kafka./launcher. prefix: " + unknown);
        }
    }

    static void applyDebeziumDefaults(Properties p) {
        p.putIfAbsent("name", "cdc-launcher");
        p.putIfAbsent("connector.class", "io.debezium.connector.postgresql.PostgresConnector");
        p.putIfAbsent("offset.storage", FILE_STORE);
        if (FILE_STORE.equals(p.getProperty("offset.storage"))) {
            // Kafka's FileOffsetBackingStore truncates and rewrites the file in place; a kill -9 during
            // that write leaves an empty/truncated file, which it then silently reads as "no offsets"
            // (=> full re-snapshot). Same file format, but written to a temp file, fsync'ed and renamed.
            p.setProperty("offset.storage", AtomicFileOffsetBackingStore.class.getName());
        }
        // Commit after every acknowledged batch: at most one batch is re-sent after a crash.
        p.putIfAbsent("offset.flush.interval.ms", "0");
        // JSON without the Connect schema envelope.
        p.putIfAbsent("key.converter.schemas.enable", "false");
        p.putIfAbsent("value.converter.schemas.enable", "false");
        // Our consumer handles tombstones (null value); keep Debezium's default of emitting them.
        p.putIfAbsent("tombstones.on.delete", "true");
    }

    static void applyProducerDefaults(Properties p) {
        String acks = p.getProperty("acks");
        if (acks != null && !acks.equals("all") && !acks.equals("-1")) {
            log.warn("Launcher: overriding kafka.acks={} with acks=all (required for at-least-once)", acks);
        }
        p.setProperty("acks", "all");
        p.putIfAbsent("client.id", "debezium-launcher");
        p.putIfAbsent("enable.idempotence", "true");
        if (!Boolean.parseBoolean(p.getProperty("enable.idempotence"))) {
            // without idempotence, >1 in-flight request can reorder records on retry
            p.putIfAbsent("max.in.flight.requests.per.connection", "1");
        }
        p.putIfAbsent("linger.ms", "0");
        // KIP-714 client telemetry: tansu answers in a way that makes the client re-subscribe every 5 s
        p.putIfAbsent("enable.metrics.push", "false");
        p.putIfAbsent("delivery.timeout.ms", "120000");
        p.putIfAbsent("request.timeout.ms", "30000");
        p.putIfAbsent("max.block.ms", "60000");
        p.remove("key.serializer");
        p.remove("value.serializer");
    }

    static boolean isSecretKey(String key) {
        String k = key.toLowerCase();
        return k.contains("password") || k.contains("secret") || k.contains("jaas") || k.contains("token")
                || k.contains("credential") || k.endsWith(".key");
    }

    static void logConfig(String prefix, Properties p) {
        Map<String, String> sorted = new TreeMap<>();
        for (String k : p.stringPropertyNames()) {
            sorted.put(k, isSecretKey(k) ? "********" : p.getProperty(k));
        }
        for (Map.Entry<String, String> e : sorted.entrySet()) {
            log.info("Launcher config: {}{} = {}", prefix, e.getKey(), e.getValue());
        }
    }

    // =====================================================================================
    // Logging: log4j2 configured in code (INFO to stdout), no config file needed.
    // =====================================================================================
    static void configureLogging(String level) {
        // One LoggerContext for every class loader: in source-file mode this class lives in its own
        // in-memory class loader, and the default selector would give Debezium/Kafka classes a
        // separate, unconfigured (ERROR-only) context.
        System.setProperty("log4j2.contextSelector", "org.apache.logging.log4j.core.selector.BasicContextSelector");
        ConfigurationBuilder<BuiltConfiguration> b = ConfigurationBuilderFactory.newConfigurationBuilder();
        b.setStatusLevel(Level.WARN);
        b.setConfigurationName("launcher");
        b.setShutdownHook("disable"); // we flush/stop logging ourselves at the end of our shutdown hook
        AppenderComponentBuilder console = b.newAppender("stdout", "Console")
                .addAttribute("target", ConsoleAppender.Target.SYSTEM_OUT);
        console.add(b.newLayout("PatternLayout")
                .addAttribute("pattern", "%d{yyyy-MM-dd'T'HH:mm:ss.SSS} %-5level [%t] %c{1.} - %msg%n%throwable"));
        b.add(console);
        // kafka-clients logs every (re)connect attempt at INFO/WARN; keep WARN and above
        b.add(b.newLogger("org.apache.kafka.clients.NetworkClient", Level.WARN)
                .add(b.newAppenderRef("stdout")).addAttribute("additivity", false));
        b.add(b.newRootLogger(Level.toLevel(level, Level.INFO)).add(b.newAppenderRef("stdout")));
        Configurator.initialize(b.build());
    }

    static void flushLogs() {
        System.out.flush();
        System.err.flush();
    }

    static String describe(Throwable t) {
        StringBuilder sb = new StringBuilder();
        Throwable cur = t;
        int depth = 0;
        while (cur != null && depth < 6) {
            if (depth > 0) {
                sb.append(" <- caused by: ");
            }
            sb.append(cur.getClass().getName()).append(": ").append(cur.getMessage());
            if (cur.getCause() == cur) {
                break;
            }
            cur = cur.getCause();
            depth++;
        }
        return sb.toString();
    }

    static void sleepQuietly(long ms) {
        try {
            Thread.sleep(ms);
        }
        catch (InterruptedException ignored) {
            Thread.currentThread().interrupt();
        }
    }
}
