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
 *                  container publishing the port needs 0.0.0.0), status.file, log.level,
 *                  connector.name (name on the Connect REST subset; default: debezium.name)
 * A value written exactly as ${env:NAME} is replaced by the environment variable NAME.
 * The producer's security settings may be given with librdkafka's names (as the harness
 * writes them for every client): kafka.security.protocol, kafka.sasl.mechanism,
 * kafka.sasl.username/kafka.sasl.password (turned into sasl.jaas.config),
 * kafka.ssl.ca.location (a PEM truststore), kafka.ssl.certificate.location with
 * kafka.ssl.key.location (a PEM keystore, read here), kafka.ssl.key.password and
 * kafka.ssl.endpoint.identification.algorithm (https, or none).
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
 * The status server also answers the subset of Kafka Connect's REST API needed to pause,
 * resume and restart the connector (GET /connectors, GET /connectors/<name>/status,
 * PUT .../pause, PUT .../resume, POST .../restart, POST .../tasks/0/restart). A restart closes
 * the engine and starts a new one in the same JVM; the process keeps running.
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
import java.util.Locale;
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
    /** The engine finished for good (failure, normal end, shutdown): not set when it is closed for a restart. */
    static volatile boolean engineFinished = false;
    /** The current engine has called pollingStarted (false again from a restart request until the new one has). */
    static volatile boolean pollingStarted = false;
    static volatile boolean shuttingDown = false;
    static final long startNanos = System.nanoTime();
    static volatile long snapshotCompletedAfterMs = -1;
    static final AtomicBoolean exitingFromMain = new AtomicBoolean(false);

    // ---- connector lifecycle (pause / resume / restart through the Connect REST subset) ----
    /** Guards current, restarting, the restart flag of a run, and the shutdown flag's hand-over. */
    static final Object lifecycle = new Object();
    /** The engine the process runs now; replaced by a restart. */
    static volatile EngineRun current;
    /** From an accepted restart request until the new engine's pollingStarted. */
    static volatile boolean restarting = false;
    /** A restart closed the engine but could not build a new one: main exits with EXIT_FAILURE. */
    static volatile boolean restartGaveUp = false;
    static volatile long restartRequestedNanos = 0;
    static final AtomicLong restarts = new AtomicLong();
    /** Paused: handleBatch holds every batch (before sending anything of it) until resume. */
    static volatile boolean paused = false;
    static final Object pauseLock = new Object();
    /** How long engine.close() is retried while the engine's tasks are starting (task start timeout is 180 s). */
    static final long RESTART_CLOSE_TIMEOUT_MS = 200_000;
    /** Debezium settings after defaults: every engine (first one and restarts) is built from a copy. */
    static volatile Properties debeziumProps;
    static volatile String connectorName = "debezium";

    static String topicPrefix = "";
    static volatile KafkaProducer<String, String> producer;
    /** Producer settings, kept to build a fresh producer after a failed batch. */
    static volatile Properties kafkaProps;
    /** How long a batch is re-sent (fresh producer, backoff) before the launcher gives up. */
    static final long SEND_RETRY_MS = 120_000;
    static HttpServer statusServer;

    /** One engine instance: the first one, or the one a restart built. */
    static final class EngineRun {
        final long number; // 0 = the first engine, n = built by restart #n
        final CountDownLatch done = new CountDownLatch(1);
        volatile DebeziumEngine<ChangeEvent<String, String>> engine;
        volatile boolean polling;
        volatile boolean finished;
        /** Closed on purpose by a restart: its end is not the end of the process. */
        volatile boolean restartRequested;

        EngineRun(long number) {
            this.number = number;
        }
    }

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
            translateSecurity(kafka);
        }
        catch (Exception e) {
            log.error("Invalid launcher configuration {}: {}", args[0], e.getMessage());
            exitFromMain(EXIT_USAGE);
        }
        String level = launcher.getProperty("log.level");
        if (level != null) {
            Configurator.setRootLevel(Level.toLevel(level, Level.INFO));
        }

        // Name on the Connect REST subset: launcher.connector.name, else the configured
        // debezium.name (read before the defaults fill it in), else "debezium".
        String configuredName = launcher.getProperty("connector.name", "").trim();
        if (configuredName.isEmpty()) {
            configuredName = debezium.getProperty("name", "").trim();
        }
        connectorName = configuredName.isEmpty() ? "debezium" : configuredName;

        applyDebeziumDefaults(debezium);
        applyProducerDefaults(kafka);
        topicPrefix = debezium.getProperty("topic.prefix", "");
        debeziumProps = debezium;
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

        // ---- broker acknowledgements (the capture hop's end) ----
        String ackFile = launcher.getProperty("ack.file", "").trim();
        if (!ackFile.isEmpty()) {
            try {
                ACKS = new AckLog(java.nio.file.Path.of(ackFile));
            }
            catch (IOException e) {
                log.error("Cannot open the acknowledgement log {}: {}", ackFile, e.toString());
                exitFromMain(EXIT_USAGE);
            }
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
        EngineRun run = new EngineRun(0);
        try {
            run.engine = buildEngine(run);
        }
        catch (Exception e) {
            lastError = describe(e);
            engineFailed = true;
            log.error("Launcher: cannot build Debezium engine: {}", lastError, e);
            closeProducer();
            exitFromMain(EXIT_FAILURE);
        }
        synchronized (lifecycle) {
            if (shuttingDown) {
                return; // a signal came during the build; the shutdown hook owns the exit
            }
            current = run;
            new Thread(run.engine, "debezium-engine").start();
        }
        startMonitor();

        // Wait for the current engine to finish (failure, or stop triggered by the shutdown hook).
        // An engine closed by a restart is followed by the one the restart thread starts.
        try {
            while (true) {
                run.done.await();
                if (shuttingDown || !run.restartRequested) {
                    break;
                }
                synchronized (lifecycle) {
                    while (current == run && !restartGaveUp && !shuttingDown) {
                        lifecycle.wait(1_000);
                    }
                }
                if (shuttingDown || current == run) {
                    break; // shutdown, or the restart could not build a new engine (engineFailed is set)
                }
                run = current;
            }
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

    /**
     * Builds (does not start) an engine from a copy of the Debezium settings, with callbacks
     * bound to its run. Used for the first engine and for every restart.
     */
    static DebeziumEngine<ChangeEvent<String, String>> buildEngine(EngineRun run) {
        Properties config = new Properties();
        config.putAll(debeziumProps);
        return DebeziumEngine.create(Json.class)
                .using(config)
                // our class loader (source-file mode) so that the engine can instantiate
                // DebeziumLauncher$AtomicFileOffsetBackingStore by name; it delegates to the classpath
                .using(DebeziumLauncher.class.getClassLoader())
                .using(new DebeziumEngine.ConnectorCallback() {
                    @Override
                    public void pollingStarted() {
                        run.polling = true;
                        boolean afterRestart;
                        synchronized (lifecycle) {
                            if (current != run || run.restartRequested) {
                                return; // an engine a restart is closing (it was still starting its tasks)
                            }
                            pollingStarted = true;
                            afterRestart = restarting;
                            restarting = false;
                        }
                        if (afterRestart) {
                            log.info("Launcher: engine polling started (restart #{} done, {} ms after the request{})",
                                    run.number, (System.nanoTime() - restartRequestedNanos) / 1_000_000,
                                    paused ? "; connector still paused" : "");
                        }
                        else {
                            log.info("Launcher: engine polling started");
                        }
                    }
                })
                .using((boolean success, String message, Throwable error) -> {
                    boolean closedForRestart;
                    synchronized (lifecycle) {
                        closedForRestart = run.restartRequested && !shuttingDown;
                        if (!closedForRestart) {
                            if (!success) {
                                engineFailed = true;
                                lastError = (message != null ? message : "engine failed")
                                        + (error != null ? " :: " + describe(error) : "");
                            }
                            engineFinished = true;
                        }
                        run.finished = true;
                    }
                    if (closedForRestart) {
                        if (success) {
                            log.info("Launcher: engine closed for restart #{}: {}", restarts.get(), message);
                        }
                        else {
                            log.warn("Launcher: engine closed for restart #{} reported: {}{}", restarts.get(), message,
                                    error != null ? " :: " + describe(error) : "");
                        }
                    }
                    else if (!success) {
                        log.error("Launcher: engine FAILED: {}", lastError, error);
                    }
                    else if (run.restartRequested) {
                        log.info("Launcher: engine completed (a restart was under way, but the launcher is shutting down): {}", message);
                    }
                    else {
                        log.info("Launcher: engine completed: {}", message);
                    }
                    run.done.countDown();
                })
                .notifying(new ProducingChangeConsumer(run))
                .build();
    }

    // =====================================================================================
    // Change consumer: send whole batch, wait for broker acks, only then mark processed.
    // =====================================================================================
    static final class ProducingChangeConsumer implements DebeziumEngine.ChangeConsumer<ChangeEvent<String, String>> {
        /** How long a held batch waits for the engine's interrupt once its engine is being closed. */
        private static final long CLOSE_INTERRUPT_GRACE_MS = 5_000;
        private final EngineRun run;

        ProducingChangeConsumer(EngineRun run) {
            this.run = run;
        }

        @Override
        public void handleBatch(List<ChangeEvent<String, String>> records,
                                DebeziumEngine.RecordCommitter<ChangeEvent<String, String>> committer)
                throws InterruptedException {
            // Paused: hold the whole batch here, before anything of it is sent (or walks the trace
            // state). Nothing of it is marked, so a restart or shutdown meanwhile re-sends it.
            awaitResumed(records.size());
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

        /**
         * Returns at once unless paused; else waits until resume. engine.close() (restart or
         * SIGTERM) cancels the polling task, which interrupts this wait: the InterruptedException
         * leaves the batch unmarked, and the engine treats the cancelled task as a clean stop.
         * Throwing before that interrupt would make the engine report a failure, so on seeing
         * its engine being closed the wait only gives the interrupt a grace period.
         */
        private void awaitResumed(int batchSize) throws InterruptedException {
            if (!paused) {
                return;
            }
            long closingSince = 0;
            boolean logged = false;
            synchronized (pauseLock) {
                while (paused) {
                    if (!logged) {
                        log.debug("Launcher: connector paused, holding a batch of {} record(s) until resume", batchSize);
                        logged = true;
                    }
                    if (shuttingDown || run.restartRequested) {
                        long now = System.nanoTime();
                        if (closingSince == 0) {
                            closingSince = now;
                        }
                        else if (now - closingSince > TimeUnit.MILLISECONDS.toNanos(CLOSE_INTERRUPT_GRACE_MS)) {
                            throw new InterruptedException("engine is being closed while paused; batch not sent, not marked");
                        }
                    }
                    pauseLock.wait(100);
                }
            }
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
            AckLog ackLog = ACKS;
            for (ProducerRecord<String, String> r : records) {
                acks.add(ackLog == null ? p.send(r) : p.send(r, ackLog::onAck));
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

    /** Where each record's broker acknowledgement is logged (launcher.ack.file); null: not logged. */
    static volatile AckLog ACKS;

    /**
     * One line per record the broker acknowledged (acks=all): topic, partition, offset and
     * the launcher's clock at the acknowledgement. The harness joins it with the sink's apply
     * log by (topic, partition, offset), so the capture hop ends when the broker has the
     * record, not when the producer stamped it (CreateTime): a broker that is down shows in
     * capture, not in apply. Written from the producer's I/O thread into a buffer, flushed
     * twice a second.
     */
    static final class AckLog {
        private final java.io.BufferedWriter out;

        AckLog(java.nio.file.Path path) throws IOException {
            out = java.nio.file.Files.newBufferedWriter(path, StandardCharsets.UTF_8,
                    java.nio.file.StandardOpenOption.CREATE, java.nio.file.StandardOpenOption.APPEND);
            java.util.concurrent.ScheduledExecutorService flusher = java.util.concurrent.Executors.newSingleThreadScheduledExecutor(r -> {
                Thread t = new Thread(r, "launcher-ack-flush");
                t.setDaemon(true);
                return t;
            });
            flusher.scheduleWithFixedDelay(this::flush, 500, 500, TimeUnit.MILLISECONDS);
            Runtime.getRuntime().addShutdownHook(new Thread(this::flush, "launcher-ack-flush-exit"));
        }

        void onAck(RecordMetadata md, Exception e) {
            if (e != null || md == null || !md.hasOffset()) {
                return;
            }
            String line = md.topic() + ' ' + md.partition() + ' ' + md.offset() + ' ' + System.currentTimeMillis() + '\n';
            synchronized (this) {
                try {
                    out.write(line);
                }
                catch (IOException ignored) {
                    // A full disk costs the capture hop's broker end, never the pipeline.
                }
            }
        }

        synchronized void flush() {
            try {
                out.flush();
            }
            catch (IOException ignored) {
                // as above
            }
        }
    }

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
        EngineRun run;
        synchronized (lifecycle) {
            // Under the lock: a restart either installed its engine before (we close that one)
            // or sees shuttingDown and starts none.
            shuttingDown = true;
            run = current;
        }
        log.info("Launcher: shutdown requested (signal), stopping engine");
        if (run == null || run.engine == null) {
            closeProducer();
            flushLogs();
            Runtime.getRuntime().halt(EXIT_OK);
        }
        // stops tasks, commits offsets of records marked processed; "already stopping" when a
        // restart is closing it right now
        closeEngine(run, 60_000);
        try {
            run.done.await(30, TimeUnit.SECONDS);
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
     * engine.close() (stops the tasks and commits the offsets of records marked processed), retried
     * while the async engine refuses because its tasks are starting. True once closed, already
     * stopping/stopped, or finished; false if it still refused at the timeout.
     */
    static boolean closeEngine(EngineRun run, long timeoutMs) {
        long deadline = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(timeoutMs);
        while (!run.finished && System.nanoTime() < deadline) {
            try {
                run.engine.close();
                return true;
            }
            catch (IllegalStateException e) {
                // "tasks are starting" (retry shortly) or "already stopping/stopped" (just wait)
                String m = String.valueOf(e.getMessage());
                if (m.contains("already")) {
                    return true;
                }
                sleepQuietly(100);
            }
            catch (Exception e) {
                log.warn("Launcher: error while closing engine: {}", describe(e));
                return true;
            }
        }
        return run.finished;
    }

    // =====================================================================================
    // Pause / resume / restart (Kafka Connect REST subset)
    // =====================================================================================
    static void pauseConnector() {
        boolean was;
        synchronized (pauseLock) {
            was = paused;
            paused = true;
        }
        log.info("Launcher: pause requested on the REST API: {}", was
                ? "already paused"
                : "change events are held in the change consumer until resume (the engine keeps its replication connection)");
    }

    static void resumeConnector() {
        boolean was;
        synchronized (pauseLock) {
            was = paused;
            paused = false;
            pauseLock.notifyAll();
        }
        log.info("Launcher: resume requested on the REST API: {}", was ? "held batches are sent now" : "was not paused");
    }

    /** Accepts a restart and runs it on its own thread; returns null, or why it was refused (409). */
    static String requestRestart(String what) {
        EngineRun old;
        long n;
        synchronized (lifecycle) {
            if (shuttingDown) {
                return "Connector " + connectorName + " cannot be restarted: the launcher is shutting down";
            }
            if (restarting) {
                return "Connector " + connectorName + " is already being restarted";
            }
            old = current;
            if (old == null) {
                return "Connector " + connectorName + " cannot be restarted: its engine is still being created";
            }
            if (engineFinished) {
                return "Connector " + connectorName + " cannot be restarted: its engine has stopped and the launcher is exiting";
            }
            restarting = true;
            pollingStarted = false;
            old.restartRequested = true;
            restartRequestedNanos = System.nanoTime();
            n = restarts.incrementAndGet();
        }
        log.info("Launcher: restart #{} requested on the REST API ({}): closing the engine, then starting a new one{}",
                n, what, paused ? " (the connector stays paused)" : "");
        Thread t = new Thread(() -> restartEngine(old, n), "launcher-restart-" + n);
        t.setDaemon(true);
        t.start();
        return null;
    }

    /** Closes the engine (commits the processed offsets), then builds and starts a new one with the same settings. */
    static void restartEngine(EngineRun old, long n) {
        try {
            if (!closeEngine(old, RESTART_CLOSE_TIMEOUT_MS)) {
                synchronized (lifecycle) {
                    if (!old.finished) {
                        old.restartRequested = false;
                        restarting = false;
                        pollingStarted = old.polling;
                        log.error("Launcher: restart #{} abandoned: the engine refused to close for {} ms (tasks starting)",
                                n, RESTART_CLOSE_TIMEOUT_MS);
                        return;
                    }
                }
            }
            while (!old.done.await(1, TimeUnit.SECONDS)) {
                if (shuttingDown) {
                    return;
                }
            }
            if (shuttingDown) {
                return;
            }
            ensureProducer();
            EngineRun next = new EngineRun(n);
            next.engine = buildEngine(next);
            synchronized (lifecycle) {
                if (shuttingDown) {
                    return; // never started: nothing to close
                }
                snapshotCompletedThisRun = false;
                current = next;
                new Thread(next.engine, "debezium-engine-" + n).start();
                lifecycle.notifyAll();
            }
            log.info("Launcher: restart #{}: new engine started ({} ms after the request)",
                    n, (System.nanoTime() - restartRequestedNanos) / 1_000_000);
        }
        catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
        catch (Exception e) {
            synchronized (lifecycle) {
                lastError = "restart #" + n + ": cannot build Debezium engine: " + describe(e);
                engineFailed = true;
                engineFinished = true;
                restartGaveUp = true;
                lifecycle.notifyAll();
            }
            log.error("Launcher: {}", lastError, e);
        }
    }

    /** A restart keeps the producer; only one that was closed is replaced. */
    static void ensureProducer() {
        synchronized (ProducingChangeConsumer.class) { // the lock of replaceProducer
            if (producer == null && !shuttingDown) {
                producer = new KafkaProducer<>(kafkaProps, new StringSerializer(), new StringSerializer());
                log.info("Launcher: the producer was closed; created a new one for the restarted engine");
            }
        }
    }

    /** Kafka Connect's connector/task state of the one connector and its one task. */
    static String connectState() {
        if (engineFailed) {
            return "FAILED";
        }
        if (shuttingDown || engineFinished || restarting || !pollingStarted) {
            return "UNASSIGNED";
        }
        return paused ? "PAUSED" : "RUNNING";
    }

    static String taskStatusJson(String state) {
        StringBuilder sb = new StringBuilder(128);
        sb.append("{\"id\":0,\"state\":\"").append(state).append("\",\"worker_id\":\"launcher\"");
        if ("FAILED".equals(state)) {
            String trace = lastError;
            sb.append(",\"trace\":").append(jsonString(trace != null ? trace : "engine failed"));
        }
        return sb.append('}').toString();
    }

    static String connectorStatusJson() {
        String state = connectState();
        return "{\"name\":" + jsonString(connectorName)
                + ",\"connector\":{\"state\":\"" + state + "\",\"worker_id\":\"launcher\"}"
                + ",\"tasks\":[" + taskStatusJson(state) + "],\"type\":\"source\"}";
    }

    static String connectError(int code, String message) {
        return "{\"error_code\":" + code + ",\"message\":" + jsonString(message) + "}";
    }

    /**
     * /connectors...: the paths and methods of Connect's REST API that pause, resume and restart
     * a connector. Path first, then method (405), then connector name (404), as Connect answers.
     */
    static void handleConnect(HttpExchange ex) throws IOException {
        try (InputStream in = ex.getRequestBody()) {
            in.readAllBytes();
        }
        String method = ex.getRequestMethod().toUpperCase(Locale.ROOT);
        String path = ex.getRequestURI().getPath();
        if (!path.equals("/connectors") && !path.startsWith("/connectors/")) {
            send(ex, 404, connectError(404, "HTTP 404 Not Found"));
            return;
        }
        List<String> seg = new ArrayList<>();
        for (String part : path.substring("/connectors".length()).split("/")) {
            if (!part.isEmpty()) {
                seg.add(part);
            }
        }
        String action;
        String allowed;
        if (seg.isEmpty()) {
            action = "list";
            allowed = "GET";
        }
        else if (seg.size() == 2 && seg.get(1).equals("status")) {
            action = "status";
            allowed = "GET";
        }
        else if (seg.size() == 2 && seg.get(1).equals("pause")) {
            action = "pause";
            allowed = "PUT";
        }
        else if (seg.size() == 2 && seg.get(1).equals("resume")) {
            action = "resume";
            allowed = "PUT";
        }
        else if (seg.size() == 2 && seg.get(1).equals("restart")) {
            action = "restart";
            allowed = "POST";
        }
        else if (seg.size() == 4 && seg.get(1).equals("tasks") && seg.get(3).equals("restart")) {
            action = "task-restart";
            allowed = "POST";
        }
        else if (seg.size() == 4 && seg.get(1).equals("tasks") && seg.get(3).equals("status")) {
            action = "task-status";
            allowed = "GET";
        }
        else {
            send(ex, 404, connectError(404, "HTTP 404 Not Found"));
            return;
        }
        if (!method.equals(allowed)) {
            ex.getResponseHeaders().set("Allow", allowed);
            send(ex, 405, connectError(405, "HTTP 405 Method Not Allowed"));
            return;
        }
        if (!seg.isEmpty() && !seg.get(0).equals(connectorName)) {
            send(ex, 404, connectError(404, "Connector " + seg.get(0) + " not found"));
            return;
        }
        if (action.startsWith("task-") && !seg.get(2).equals("0")) {
            send(ex, 404, connectError(404, "Unknown task: " + connectorName + "-" + seg.get(2)));
            return;
        }
        switch (action) {
            case "list":
                send(ex, 200, "[" + jsonString(connectorName) + "]");
                break;
            case "status":
                send(ex, 200, connectorStatusJson());
                break;
            case "task-status":
                send(ex, 200, taskStatusJson(connectState()));
                break;
            case "pause":
                pauseConnector();
                send(ex, 202, null);
                break;
            case "resume":
                resumeConnector();
                send(ex, 202, null);
                break;
            default: { // restart, task-restart
                String refused = requestRestart(method + " " + path);
                if (refused != null) {
                    log.info("Launcher: restart refused (409): {}", refused);
                    send(ex, 409, connectError(409, refused));
                }
                else {
                    send(ex, 204, null);
                }
            }
        }
    }

    /** Sends code with a JSON body, or with no body at all when body is null (202, 204). */
    static void send(HttpExchange ex, int code, String body) throws IOException {
        if (body == null) {
            ex.sendResponseHeaders(code, -1);
            ex.close();
            return;
        }
        byte[] bytes = body.getBytes(StandardCharsets.UTF_8);
        ex.getResponseHeaders().set("Content-Type", "application/json");
        ex.sendResponseHeaders(code, bytes.length);
        try (OutputStream os = ex.getResponseBody()) {
            os.write(bytes);
        }
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
        statusServer.createContext("/connectors", DebeziumLauncher::handleConnect);
        statusServer.start();
        int actual = statusServer.getAddress().getPort();
        System.out.println("LAUNCHER_STATUS_PORT=" + actual);
        System.out.flush();
        log.info("Launcher: status endpoint on http://127.0.0.1:{}/status, Connect REST subset on /connectors (connector {})",
                actual, connectorName);
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
    /** As snapshotCompletedSeen, but for the current engine only (reset by a restart). */
    static volatile boolean snapshotCompletedThisRun = false;
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
        if (Boolean.TRUE.equals(snapCompleted)) {
            snapshotCompletedThisRun = true;
        }
        boolean streaming = Boolean.TRUE.equals(connected);
        String state;
        if (engineFailed) {
            state = "failed";
        }
        else if (engineFinished || shuttingDown) {
            state = "stopped";
        }
        else if (restarting) {
            // old engine being closed, or the new one not polling yet (old MBeans may linger)
            state = "starting";
        }
        else if (streaming) {
            state = "streaming";
        }
        else if (Boolean.TRUE.equals(snapRunning) || (snapshotCompletedThisRun && !Boolean.TRUE.equals(connected))) {
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
        sb.append("\"paused\":").append(paused).append(',');
        sb.append("\"restarts\":").append(restarts.get()).append(',');
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
        // The converter settings are Debezium's own (JSON with schemas) unless the properties
        // say otherwise: the harness writes its choice, and can run Debezium at its defaults.
        // Our consumer handles tombstones (null value); keep Debezium's default of emitting them.
        p.putIfAbsent("tombstones.on.delete", "true");
    }

    /**
     * librdkafka's security settings to the Java client's: the same connection as the
     * harness's and the sink's clients (host name verified unless "none" is given).
     */
    static void translateSecurity(Properties p) throws IOException {
        String mechanisms = (String) p.remove("sasl.mechanisms");
        if (mechanisms != null) {
            p.putIfAbsent("sasl.mechanism", mechanisms);
        }
        String user = (String) p.remove("sasl.username");
        String password = (String) p.remove("sasl.password");
        if (user != null || password != null) {
            if (user == null || password == null) {
                throw new IOException("kafka.sasl.username and kafka.sasl.password go together");
            }
            String mechanism = p.getProperty("sasl.mechanism", "PLAIN");
            String module = mechanism.startsWith("SCRAM-")
                    ? "org.apache.kafka.common.security.scram.ScramLoginModule"
                    : "org.apache.kafka.common.security.plain.PlainLoginModule";
            p.setProperty("sasl.jaas.config", module + " required username=" + jaasQuote(user) + " password=" + jaasQuote(password) + ";");
        }
        String ca = (String) p.remove("ssl.ca.location");
        if (ca != null) {
            p.setProperty("ssl.truststore.type", "PEM");
            p.setProperty("ssl.truststore.location", ca);
        }
        String cert = (String) p.remove("ssl.certificate.location");
        String key = (String) p.remove("ssl.key.location");
        if (cert != null || key != null) {
            if (cert == null || key == null) {
                throw new IOException("kafka.ssl.certificate.location and kafka.ssl.key.location go together");
            }
            // In memory only: the key is never written anywhere else.
            p.setProperty("ssl.keystore.type", "PEM");
            p.setProperty("ssl.keystore.certificate.chain", Files.readString(Paths.get(cert), StandardCharsets.US_ASCII));
            p.setProperty("ssl.keystore.key", Files.readString(Paths.get(key), StandardCharsets.US_ASCII));
        }
        String identification = p.getProperty("ssl.endpoint.identification.algorithm");
        if ("none".equalsIgnoreCase(identification)) {
            p.setProperty("ssl.endpoint.identification.algorithm", "");
        }
        if ("false".equalsIgnoreCase((String) p.remove("enable.ssl.certificate.verification"))) {
            throw new IOException("kafka.enable.ssl.certificate.verification=false has no equivalent in the Java producer");
        }
    }

    /** A JAAS option value: double-quoted, backslash and quote escaped. */
    static String jaasQuote(String value) {
        return "\"" + value.replace("\\", "\\\\").replace("\"", "\\\"") + "\"";
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
