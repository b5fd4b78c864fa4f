using System.Globalization;
using System.Text.Json;
using System.Text.RegularExpressions;
using DistributedBackprop.Cli.Commands;

namespace DistributedBackprop.Cli.Tests;

/// <summary>The `dbp` commands end to end, as a user runs them: exit codes, outputs, error lines.</summary>
public sealed partial class CommandTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("dbp-cli-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private DbpResult Dbp(params string[] args) => DbpProcess.Run(_dir, args);

    private string Write(string name, string content)
    {
        string path = Path.Combine(_dir, name);
        File.WriteAllText(path, content);
        return path;
    }

    /// <summary>A small learnable CSV: two numeric features, string labels.</summary>
    private string BlobsCsv(string name = "blobs.csv", int rows = 120)
    {
        var lines = new List<string> { "x1,x2,kind" };
        var random = new Random(3);
        for (int i = 0; i < rows; i++)
        {
            string kind = (i % 3) switch { 0 => "red", 1 => "green", _ => "blue" };
            double cx = i % 3 * 4.0, cy = i % 3 == 1 ? 3.0 : 0.0;
            lines.Add(string.Create(CultureInfo.InvariantCulture, $"{cx + random.NextDouble():F3},{cy + random.NextDouble():F3},{kind}"));
        }
        return Write(name, string.Join('\n', lines) + "\n");
    }

    [Fact]
    public void TrainWithNoOptions_LearnsTheEmbeddedDigits()
    {
        DbpResult result = Dbp("train");
        Assert.True(result.ExitCode == 0, result.Stderr);
        Match match = AccuracyLine().Match(result.Stdout);
        Assert.True(match.Success, result.Stdout);
        double accuracy = double.Parse(match.Groups[1].Value, CultureInfo.InvariantCulture);
        Assert.True(accuracy >= 95.0, $"test accuracy {accuracy}%");
        Assert.Contains("digits (embedded)", result.Stdout);
        // Not a terminal: plain lines per epoch, no progress-bar escape codes.
        Assert.Contains("epoch  30", result.Stdout);
        Assert.DoesNotContain("\u001b[", result.Stdout);
    }

    [Fact]
    public void TrainEvaluatePredictGradients_WorkTogether()
    {
        string data = BlobsCsv();
        string model = Path.Combine(_dir, "model.safetensors");
        string metrics = Path.Combine(_dir, "metrics.jsonl");
        DbpResult train = Dbp("train", "--data", data, "--layers", "8", "--epochs", "5", "--batch-size", "16", "--out", model, "--metrics", metrics, "--test-fraction", "0.25");
        Assert.True(train.ExitCode == 0, train.Stderr);
        Assert.True(File.Exists(model));

        string[] lines = File.ReadAllLines(metrics);
        Assert.Equal(5, lines.Length);
        foreach (string line in lines)
        {
            using var json = JsonDocument.Parse(line);
            foreach (string field in new[] { "epoch", "step", "train_loss", "test_loss", "test_accuracy", "samples_per_second", "elapsed_seconds" })
            {
                Assert.True(json.RootElement.TryGetProperty(field, out _), $"metrics line lacks {field}: {line}");
            }
        }

        DbpResult evaluate = Dbp("evaluate", "--model", model, "--data", data, "--json");
        Assert.True(evaluate.ExitCode == 0, evaluate.Stderr);
        using (var json = JsonDocument.Parse(evaluate.Stdout))
        {
            Assert.Equal(120, json.RootElement.GetProperty("n").GetInt32());
            Assert.True(json.RootElement.GetProperty("accuracy").GetDouble() > 0.9, evaluate.Stdout);
            Assert.True(json.RootElement.GetProperty("loss").GetDouble() > 0);
            Assert.Equal(["red", "green", "blue"], json.RootElement.GetProperty("classes").EnumerateArray().Select(e => e.GetString()));
        }
        DbpResult table = Dbp("evaluate", "--model", model, "--data", data);
        Assert.Contains("confusion matrix", table.Stdout);

        string predictions = Path.Combine(_dir, "predictions.csv");
        DbpResult predict = Dbp("predict", "--model", model, "--data", data, "--out", predictions);
        Assert.True(predict.ExitCode == 0, predict.Stderr);
        string[] rows = File.ReadAllLines(predictions);
        Assert.Equal("row,predicted,prob_red,prob_green,prob_blue", rows[0]);
        Assert.Equal(121, rows.Length);
        double[] probabilities = rows[1].Split(',')[2..].Select(p => double.Parse(p, CultureInfo.InvariantCulture)).ToArray();
        Assert.Equal(1.0, probabilities.Sum(), 5);

        string unlabelled = Write("unlabelled.csv", "x1,x2\n0.5,0.5\n8.5,0.2\n");
        DbpResult predictStdout = Dbp("predict", "--model", model, "--data", unlabelled);
        Assert.True(predictStdout.ExitCode == 0, predictStdout.Stderr);
        Assert.Equal(["0,red", "1,blue"], predictStdout.Stdout.Trim().Split('\n').Skip(1).Select(l => string.Join(',', l.Split(',')[..2])));

        string gradients = Path.Combine(_dir, "grad.safetensors");
        DbpResult grad = Dbp("gradients", "--model", model, "--data", data, "--out", gradients);
        Assert.True(grad.ExitCode == 0, grad.Stderr);
        Assert.True(new FileInfo(gradients).Length > 100);
    }

    [Theory]
    [InlineData("--lr", "-1", "--lr: must be a positive number")]
    [InlineData("--batch-size", "0", "--batch-size: must be at least 1")]
    [InlineData("--layers", "64,x", "--layers: 'x' is not a positive layer width")]
    [InlineData("--loss", "hinge", "--loss: unknown value 'hinge' (expected mse, cross_entropy)")]
    [InlineData("--optimizer", "rmsprop", "--optimizer: unknown value 'rmsprop' (expected sgd, momentum, adam)")]
    [InlineData("--activation", "softmax", "--activation: softmax is only allowed on the output layer")]
    [InlineData("--epochs", "abc", "--epochs: 'abc' is not an integer")]
    [InlineData("--momentum", "1.5", "--momentum: must be in [0, 1)")]
    [InlineData("--test-fraction", "1", "--test-fraction: must be in [0, 1)")]
    [InlineData("--layers", "100000000", "--layers: the network would have 7,500,000,010 parameters")]
    [InlineData("--layers", "10000000", "--layers: training this network needs at least")]
    [InlineData("--batch-size", "2000000000", "--batch-size: training this network needs at least")]
    [InlineData("--lr", "1e300", "--lr: 1e300 is beyond a float's range (±3.4E+38)")]
    [InlineData("--epochs", "99999999999", "--epochs: 99999999999 is too large (at most 2,147,483,647)")]
    [InlineData("--seed", "x", "--seed: 'x' is not an integer from 0 to 18446744073709551615")]
    public void BadOptions_GiveOneLineNamingTheOption_AndExitCode2(string option, string value, string expected)
    {
        DbpResult result = option == "--epochs" ? Dbp("train", option, value) : Dbp("train", option, value, "--epochs", "1");
        Assert.Equal(2, result.ExitCode);
        Assert.Contains(expected, result.Stderr);
        Assert.Empty(result.Stdout.Trim());
    }

    [Fact]
    public void AnErrorQuotingAPathWithANewlineOrAnEscape_StaysOneLine()
    {
        // Both used to print the path as it is: the first error took two lines, the second sent ESC to the terminal.
        string data = Path.Combine(_dir, "a\nb.csv");
        DbpProcess.AssertUsageError(Dbp("train", "--data", data), $"{_dir}/a\\nb.csv: no such file or directory");
        string output = Path.Combine(_dir, "no\u001b[2Jdir", "model.safetensors");
        DbpResult result = Dbp("train", "--epochs", "1", "--out", output);
        DbpProcess.AssertUsageError(result, "--out: directory " + _dir + "/no\\u001B[2Jdir does not exist");
        Assert.DoesNotContain('\u001b', result.Stderr);
    }

    [Theory]
    [InlineData("plain", "plain")]
    [InlineData("a\nb\r\tc", "a\\nb\\r\\tc")]
    [InlineData("bell\u0007 esc\u001b del\u007f é", "bell\\u0007 esc\\u001B del\\u007F é")]
    public void OneLine_WritesEveryControlCharacterAsAVisibleEscape(string text, string expected) =>
        Assert.Equal(expected, DistributedBackprop.Actors.OneLine.Of(text));

    [Theory]
    [InlineData(new[] { "bench", "--inputs", "2000000000" }, "--inputs: the synthetic data would be 4,096 rows")]
    [InlineData(new[] { "bench", "--batch-size", "2000000000" }, "--batch-size: the synthetic data would be 32,000,000,000 rows")]
    [InlineData(new[] { "bench", "--gemm-shapes", "2000000000x2000000000x1" }, "--gemm-shapes: 2000000000x2000000000x1 has a matrix of 4,000,000,000,000,000,000 floats; at most 268,435,456")]
    [InlineData(new[] { "bench", "--gemm-shapes", "128x784x256,100000x100000x100000" }, "--gemm-shapes: 100000x100000x100000 has a matrix of 10,000,000,000 floats")]
    [InlineData(new[] { "bench", "--gemm-shapes", "10000x10000x10000" }, "--gemm-shapes: 10000x10000x10000 is 2E+12 flops (2·m·k·n); at most 1E+11 per product")]
    [InlineData(new[] { "bench", "--workers", "100000" }, "--workers: must be at most 1,024 (a step is cut into at most 1024 chunks (--chunks) or replicas, one per busy worker; more would only idle), got 100,000")]
    [InlineData(new[] { "train", "--epochs", "1", "--workers", "100000" }, "--workers: must be at most 1,024")]
    [InlineData(new[] { "bench-transfer", "--floats", "2000000000", "--messages", "1", "--insecure" }, "--floats: must be at most 268,435,456 (a message is serialized into one byte array")]
    public void SizesAndCounts_AreCheckedBeforeAllocating_InOneLineNamingTheOption(string[] args, string expected) =>
        DbpProcess.AssertUsageError(Dbp(args), expected, args[0]);

    [Theory]
    [InlineData(new[] { "worker", "--join", "127.0.0.1:9" }, "--token: a join token is required")]
    [InlineData(new[] { "worker", "--join", "127.0.0.1:9", "--token", "letmein" }, "--token: not a dbp join token")]
    [InlineData(new[] { "worker", "--join", "127.0.0.1:9", "--token", "DBPTKN-1-abc-def" }, "--token: malformed dbp join token")]
    [InlineData(new[] { "worker", "--join", "127.0.0.1:9", "--token-file", "/nonexistent/token" }, "/nonexistent/token: join token file not found")]
    public void WorkerWithoutAUsableToken_IsRefusedBeforeConnecting_InOneLine(string[] args, string expected)
    {
        DbpResult result = Dbp(args);
        Assert.Equal(2, result.ExitCode);
        Assert.Contains(expected, result.Stderr);
        Assert.Single(result.Stderr.Trim().Split('\n'));
        Assert.DoesNotContain("letmein", result.Stderr); // a secret is never echoed
    }

    [Theory]
    [InlineData(new[] { "serve", "--insecure", "--port", "70000" }, "--port: must be at most 65,535 (the largest TCP port), got 70,000")]
    [InlineData(new[] { "serve", "--insecure", "--bulk-port", "70000" }, "--bulk-port: '70000' is not a port number (0 to 65535)")]
    [InlineData(new[] { "serve", "--insecure", "--bulk-port", "-3" }, "--bulk-port: '-3' is not a port number (0 to 65535)")]
    [InlineData(new[] { "serve", "--insecure", "--port", "65535" }, "--port 65535: the bulk channel's default port is the next one, 65536, beyond 65535; give --bulk-port")]
    [InlineData(new[] { "worker", "--join", "127.0.0.1:9", "--insecure", "--server-bulk-port", "70000" }, "--server-bulk-port: must be at most 65,535")]
    [InlineData(new[] { "worker", "--join", "127.0.0.1:9", "--insecure", "--link-rate", "3furlongs" }, "--link-rate: '3furlongs' is not a link rate (auto, off, or 1mbit to 10000gbit")]
    [InlineData(new[] { "worker", "--join", "127.0.0.1:9", "--insecure", "--link-rate", "100kbit" }, "--link-rate: '100kbit' is not a link rate")]
    [InlineData(new[] { "serve", "--token-file", "/nonexistent/x/token" }, "--token-file: directory /nonexistent/x does not exist")]
    [InlineData(new[] { "train", "--epochs", "1", "--out", "" }, "--out: a file name is required, got ''")]
    [InlineData(new[] { "plot", "metrics.jsonl", "--out", " " }, "--out: a file name is required, got ' '")]
    [InlineData(new[] { "serve", "--insecure", "--bind-host", "not a host!!" }, "--bind-host not a host!!: not an IP address, nor a host name")]
    [InlineData(new[] { "worker", "--join", "127.0.0.1:9", "--insecure", "--bind-host", "bad host!" }, "--bind-host bad host!: not an IP address, nor a host name")]
    [InlineData(new[] { "serve", "--insecure", "--bind-host", "203.0.113.5" }, "--bind-host 203.0.113.5: cannot bind to 203.0.113.5")]
    public void BadNodeOptionsAndPaths_AreOneLineNamingTheOption_BeforeTheNodeStarts(string[] args, string expected) =>
        DbpProcess.AssertUsageError(Dbp(args), expected, args[0]);

    /// <summary>A port another process listens on: one line naming the option and the address, exit 2, no stack trace.</summary>
    [Fact]
    public void PortsInUse_AreOneLineNamingTheOption()
    {
        using var squatter = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, 0);
        squatter.Start();
        int taken = ((System.Net.IPEndPoint)squatter.LocalEndpoint).Port;
        DbpProcess.AssertUsageError(Dbp("serve", "--insecure", "--port", $"{taken}", "--bulk-port", "0"), $"dbp serve: --port: 127.0.0.1:{taken} is already in use by another process", "serve");
        DbpProcess.AssertUsageError(Dbp("serve", "--insecure", "--port", "0", "--bulk-port", $"{taken}"),
            $"dbp serve: --bulk-port: 127.0.0.1:{taken} is already in use by another process (the server's bulk channel takes --port + 1 unless --bulk-port says otherwise)", "serve");
    }

    /// <summary>A cluster config's hostname that is no address of this machine: one line naming it, exit 2, with any port or a pinned one.</summary>
    [Fact]
    public void AConfigHostnameNotOnThisMachine_IsOneLineNamingIt()
    {
        string config = Path.Combine(_dir, "elsewhere.conf");
        File.WriteAllText(config, "akka.remote.dot-netty.tcp.hostname = \"203.0.113.5\"\n");
        DbpProcess.AssertUsageError(Dbp("serve", "--insecure", "--port", "0", "--cluster-config", config),
            "dbp serve: 203.0.113.5: this node cannot listen on it (AddressNotAvailable); check --bind-host, or akka.remote.dot-netty.tcp.hostname in the cluster config", "serve");
        DbpProcess.AssertUsageError(Dbp("serve", "--insecure", "--port", "4081", "--cluster-config", config),
            "dbp serve: --bulk-port: 203.0.113.5:4082 cannot be bound: 203.0.113.5 is not an address of this machine", "serve"); // tried first: --port + 1
    }

    [Fact]
    public void ABadLocalUpdateInTheEnvironment_IsOneLineNamingIt_AndWritesNoModel()
    {
        string model = Path.Combine(_dir, "never.safetensors");
        DbpResult result = DbpProcess.Run(_dir, new Dictionary<string, string> { ["DBP_UPDATE_LAYOUT"] = "shared" },
            "train", "--workers", "2", "--epochs", "1", "--out", model);
        DbpProcess.AssertUsageError(result, "DBP_UPDATE_LAYOUT: 'shared' is none of auto, replicated, split");
        Assert.False(File.Exists(model));
    }

    [Fact]
    public void ABadLinkRateInAClusterConfig_IsOneLineNamingTheFileAndTheSetting()
    {
        string config = Path.Combine(_dir, "pace.conf");
        File.WriteAllText(config, "dbp.bulk-channel.link-rate = fast\n");
        DbpProcess.AssertUsageError(Dbp("worker", "--join", "127.0.0.1:9", "--insecure", "--cluster-config", config), $"{config}: dbp.bulk-channel.link-rate: 'fast' is not a link rate", "worker");
        DbpResult fromEnvironment = DbpProcess.Run(_dir, new Dictionary<string, string> { ["DBP_LINK_RATE"] = "quick" }, "worker", "--join", "127.0.0.1:9", "--insecure");
        DbpProcess.AssertUsageError(fromEnvironment, "DBP_LINK_RATE: 'quick' is not a link rate", "worker");
        // Given as an option, the file's value is not the one used: the worker goes on to knock (nobody answers).
        DbpResult overridden = Dbp("worker", "--join", "127.0.0.1:9", "--insecure", "--cluster-config", config, "--link-rate", "1gbit", "--join-timeout", "1");
        Assert.Equal(1, overridden.ExitCode);
        Assert.Contains("no server answered at 127.0.0.1:9", overridden.Stderr);
        Assert.DoesNotContain("is not a link rate", overridden.Stderr);
    }

    [Fact]
    public void ABinaryClusterConfig_IsOneLineNamingTheFile_WithoutEchoingIt()
    {
        string config = Path.Combine(_dir, "bin.conf");
        byte[] garbage = new byte[4096];
        new Random(5).NextBytes(garbage);
        garbage[0] = (byte)'a'; // a HOCON key, then the garbage the parser trips on
        File.WriteAllBytes(config, garbage);
        DbpResult result = Dbp("serve", "--cluster-config", config, "--show-config");
        DbpProcess.AssertUsageError(result, $"{config}: not a HOCON configuration file", "serve");
        Assert.True(result.Stderr.Length < 300, result.Stderr);
    }

    [Theory]
    [InlineData("0")]
    [InlineData("2")]
    [InlineData("2 --server-shards 3")]
    public void Divergence_StopsWithExit1_InEveryMode_AndWritesNoModelOrCheckpoint(string workers)
    {
        string name = workers.Replace(' ', '_');
        string model = Path.Combine(_dir, $"nan-{name}.safetensors"), checkpoint = Path.Combine(_dir, $"nan-{name}.ckpt");
        DbpResult result = Dbp(["train", "--lr", "1e6", "--workers", .. workers.Split(' '), "--out", model, "--checkpoint", checkpoint, "--progress", "none"]);
        Assert.Equal(1, result.ExitCode);
        Assert.Contains("training stopped:", result.Stderr);
        Assert.Contains("the parameters after step", result.Stderr);
        Assert.False(File.Exists(model), "a diverged run wrote a model");
        Assert.False(File.Exists(checkpoint), "a diverged run wrote a checkpoint");
    }

    [Theory]
    [InlineData("0")]
    [InlineData("2")]
    [InlineData("2 --server-shards 3")]
    public void DivergenceAfterACheckpoint_NamesTheLastGoodOne_AndLeavesItAsItWas(string workers)
    {
        // The warm-up raises γ by 0.1 per step: good for the first few dozen steps, then divergence.
        string name = workers.Replace(' ', '_');
        string model = Path.Combine(_dir, $"late-{name}.safetensors"), checkpoint = Path.Combine(_dir, $"late-{name}.ckpt");
        DbpResult result = Dbp(["train", "--lr", "1e6", "--warmup-steps", "10000000", "--checkpoint", checkpoint, "--checkpoint-every", "5",
            "--epochs", "50", "--workers", .. workers.Split(' '), "--out", model, "--progress", "none"]);
        Assert.Equal(1, result.ExitCode);
        Match named = Regex.Match(result.Stderr, $"the last good checkpoint is {Regex.Escape(checkpoint)} \\(after step (\\d+)\\)");
        Assert.True(named.Success, result.Stderr);
        Assert.Equal(0, int.Parse(named.Groups[1].Value, CultureInfo.InvariantCulture) % 5);
        Assert.False(File.Exists(model), "a diverged run wrote a model");
        Assert.Empty(Directory.GetFiles(_dir, "late-*.tmp*"));
        // The checkpoint is whole and finite: it resumes (and diverges again at the same step).
        DbpResult resumed = Dbp(["train", "--lr", "1e6", "--warmup-steps", "10000000", "--resume", checkpoint, "--epochs", "50", "--workers", .. workers.Split(' '), "--progress", "none"]);
        Assert.Equal(1, resumed.ExitCode);
        Assert.Equal(Regex.Match(result.Stderr, "step (\\d+)").Value, Regex.Match(resumed.Stderr, "step (\\d+)").Value);
        // Every mode stops at the same step and leaves the same last good checkpoint (with shards: gathered from them).
        string plainCheckpoint = Path.Combine(_dir, "late-reference.ckpt");
        DbpResult plain = Dbp("train", "--lr", "1e6", "--warmup-steps", "10000000", "--checkpoint", plainCheckpoint, "--checkpoint-every", "5",
            "--epochs", "50", "--progress", "none");
        Assert.Equal(named.Groups[1].Value, Regex.Match(plain.Stderr, "the last good checkpoint is .* \\(after step (\\d+)\\)").Groups[1].Value);
        Assert.Equal(File.ReadAllBytes(plainCheckpoint), File.ReadAllBytes(checkpoint));
    }

    [Fact]
    public void IncompatibleLossAndOutput_IsAUsageError()
    {
        DbpResult result = Dbp("train", "--loss", "cross_entropy", "--output-activation", "sigmoid");
        Assert.Equal(2, result.ExitCode);
        Assert.Contains("cross_entropy needs --output-activation softmax", result.Stderr);
    }

    [Theory]
    [InlineData("x1,x2,kind\n1,2,a\n3,b\n", "bad.csv:3: 2 fields, the header has 3")]
    [InlineData("x1,x2,kind\n1,2,a\n3,four,b\n", "bad.csv:3:2: 'four' in column 'x2' is not a number")]
    [InlineData("x1,x2,kind\n1,NaN,a\n", "bad.csv:2:2: 'NaN' in column 'x2' is not a finite number")]
    [InlineData("x1,x2,kind\n1,,a\n", "bad.csv:2:2: empty cell in feature column 'x2'")]
    public void BadData_GivesOneLineWithFileAndLine_ExitCode2_AndNoOutputFiles(string content, string expected)
    {
        string data = Write("bad.csv", content);
        DbpResult result = Dbp("train", "--data", data, "--out", "model.safetensors", "--metrics", "metrics.jsonl");
        Assert.Equal(2, result.ExitCode);
        string[] lines = result.Stderr.Trim().Split('\n');
        Assert.Single(lines);
        Assert.Contains(expected, lines[0]);
        Assert.Equal(["bad.csv"], Directory.GetFiles(_dir).Select(Path.GetFileName));
    }

    [Fact]
    public void ACsvLineLongerThanTheLimit_IsRefusedBeforeItIsHeld_InOneLineWithFileAndLine()
    {
        // A few kB of gzip that expands to a line one character over the limit: the reader must stop at the limit.
        string data = Path.Combine(_dir, "longline.csv.gz");
        using (var gzip = new System.IO.Compression.GZipStream(File.Create(data), System.IO.Compression.CompressionLevel.SmallestSize))
        {
            gzip.Write("x1,x2,kind\n1,2,a\n"u8);
            byte[] line = new byte[Data.CsvReader.MaxLineLength + 1];
            Array.Fill(line, (byte)'1');
            gzip.Write(line);
        }
        DbpProcess.AssertUsageError(Dbp("train", "--data", data, "--epochs", "1", "--progress", "none"),
            string.Create(CultureInfo.InvariantCulture, $"{data}:3: line longer than {Data.CsvReader.MaxLineLength:N0} characters"));
    }

    [Fact]
    public void AHeaderlessCsv_KeepsEveryRow_TheModelEqualsTheSameDataWithAHeader()
    {
        string[] rows = File.ReadAllLines(BlobsCsv()).Skip(1).Select(r => r.Replace("red", "0", StringComparison.Ordinal).Replace("green", "1", StringComparison.Ordinal).Replace("blue", "2", StringComparison.Ordinal)).ToArray();
        string plain = Write("plain.csv", string.Join('\n', rows) + "\n");
        string named = Write("named.csv", "x1,x2,kind\n" + string.Join('\n', rows) + "\n");
        Assert.Equal(0, Dbp("train", "--data", plain, "--epochs", "2", "--out", "plain.safetensors", "--progress", "none").ExitCode);
        Assert.Equal(0, Dbp("train", "--data", named, "--epochs", "2", "--out", "named.safetensors", "--progress", "none").ExitCode);
        Assert.Equal(File.ReadAllBytes(Path.Combine(_dir, "named.safetensors")), File.ReadAllBytes(Path.Combine(_dir, "plain.safetensors")));
        // Said to have a header, the plain file loses its first row: another model.
        Assert.Equal(0, Dbp("train", "--data", plain, "--header", "yes", "--epochs", "2", "--out", "short.safetensors", "--progress", "none").ExitCode);
        Assert.NotEqual(File.ReadAllBytes(Path.Combine(_dir, "plain.safetensors")), File.ReadAllBytes(Path.Combine(_dir, "short.safetensors")));
    }

    [Fact]
    public void AFirstRowOfNumbersAndOneWord_IsRefusedAsAmbiguous_UntilHeaderIsSaid()
    {
        string data = Write("iris-like.csv", "5.1,3.5,setosa\n6.2,2.9,virginica\n4.9,3.0,setosa\n6.0,3.1,virginica\n5.0,3.3,setosa\n");
        DbpResult result = Dbp("train", "--data", data, "--epochs", "1", "--test-fraction", "0.4");
        Assert.Equal(2, result.ExitCode);
        Assert.Single(result.Stderr.Trim().Split('\n'));
        Assert.Contains("iris-like.csv:1: cannot tell whether the first row is a header or data", result.Stderr);
        Assert.Equal(0, Dbp("train", "--data", data, "--header", "no", "--epochs", "1", "--test-fraction", "0.4", "--progress", "none").ExitCode);
        DbpResult bad = Dbp("train", "--data", data, "--header", "maybe");
        Assert.Equal(2, bad.ExitCode);
        Assert.Contains("--header: unknown value 'maybe' (expected auto, yes, no)", bad.Stderr);
    }

    [Theory]
    [InlineData(new[] { "train", "--epoch", "3" }, "dbp train: unknown option '--epoch'; did you mean --epochs?")]
    [InlineData(new[] { "train", "--optimiser", "adam" }, "dbp train: unknown option '--optimiser'; did you mean --optimizer?")]
    [InlineData(new[] { "serve", "--min-worker", "2" }, "dbp serve: unknown option '--min-worker'; did you mean --min-workers?")]
    [InlineData(new[] { "trian" }, "dbp: unexpected argument 'trian'; did you mean train?")]
    [InlineData(new[] { "train", "--bogus-thing", "4" }, "dbp train: unknown option '--bogus-thing'")]
    public void AMistypedOptionOrCommand_IsOneLine_WithTheClosestKnownName_Exit2(string[] args, string expected)
    {
        DbpResult result = Dbp(args);
        Assert.Equal(2, result.ExitCode);
        string[] lines = result.Stderr.Trim().Split('\n');
        // The mistake (its value included), then where to look, on one line: nothing else.
        string command = args[0] == "trian" ? "dbp" : $"dbp {args[0]}";
        Assert.Equal([$"{expected} (see: {command} --help)"], lines.Select(line => line.TrimEnd()));
    }

    [Theory]
    [InlineData("train", new[] { "[default: cross_entropy]", "[default: relu]", "[default: softmax]", "[default: momentum]", "[default: constant]", "--progress <auto|bar|plain|none>", "[default: auto]" })]
    [InlineData("bench", new[] { "[default: 256,128]", "[default: sgd]", "[default: cross_entropy]" })]
    [InlineData("serve", new[] { "[default: cross_entropy]", "--progress <auto|bar|plain|none>" })]
    public void Help_ShowsDefaultsAsTheyAreTyped(string command, string[] expected)
    {
        DbpResult result = Dbp(command, "--help");
        Assert.Equal(0, result.ExitCode);
        foreach (string text in expected)
        {
            Assert.Contains(text, result.Stdout);
        }
        // No default in the spelling of a C# name (CrossEntropy, Relu, Auto) and no list joined with '|'.
        Assert.DoesNotMatch(@"\[default: [A-Z]", result.Stdout);
        Assert.DoesNotMatch(@"\[default: \d+\|", result.Stdout);
    }

    [Fact]
    public void OptionsWithoutEffect_AreNamedInOneLineWarningEach_AndTheRunGoesOn()
    {
        DbpResult result = Dbp("train", "--optimizer", "adam", "--momentum", "0.5", "--schedule", "cosine", "--decay-every", "3",
            "--workers", "16", "--threads", "2", "--checkpoint-every", "5", "--epochs", "1", "--progress", "none");
        Assert.Equal(0, result.ExitCode);
        string[] warnings = result.Stderr.Split('\n').Where(l => l.Contains("warning:", StringComparison.Ordinal)).ToArray();
        Assert.Equal(
        [
            "dbp train: warning: --momentum has no effect with --optimizer adam (it tunes --optimizer momentum)",
            "dbp train: warning: --decay-every has no effect with --schedule cosine (it tunes --schedule step)",
            "dbp train: warning: --threads has no effect with worker actors (--workers 16): each worker computes on one thread; --workers 0 --threads 2 runs the plain trainer",
            "dbp train: warning: --workers 16 with --chunks 8: at most 8 workers compute in a step, 8 will idle (--chunks is part of the model's definition: more chunks, another model)",
            "dbp train: warning: --checkpoint-every has no effect without --checkpoint FILE",
        ], warnings.Select(w => w.TrimEnd()));
        // The same options where they do act: no warning (the run has ended, so its whole stderr is here).
        DbpResult quiet = Dbp("train", "--optimizer", "momentum", "--momentum", "0.5", "--schedule", "step", "--decay-every", "3",
            "--workers", "0", "--threads", "2", "--checkpoint", "run.ckpt", "--checkpoint-every", "5", "--epochs", "1", "--progress", "none");
        Assert.Equal(0, quiet.ExitCode);
        Assert.DoesNotContain("warning:", quiet.Stderr, StringComparison.Ordinal);
    }

    [Fact]
    public void DefaultWorkerNames_DifferBetweenProcessesOnOneHost()
    {
        // Containers all run as PID 1: the suffix is random, not the PID.
        string[] names = Enumerable.Range(0, 50).Select(_ => WorkerCommand.DefaultName()).ToArray();
        Assert.Equal(names.Length, names.Distinct().Count());
        Assert.All(names, n => Assert.Matches("^worker-[A-Za-z0-9-]+-[0-9a-f]{6}$", n));
    }

    [Fact]
    public void UnknownLabelColumn_IsReported()
    {
        string data = BlobsCsv();
        DbpResult result = Dbp("train", "--data", data, "--label", "colour");
        Assert.Equal(2, result.ExitCode);
        Assert.Contains("no column named 'colour'", result.Stderr);
    }

    [Fact]
    public void LabelNamedByADuplicatedHeader_IsRefused_NotGuessed()
    {
        string data = Path.Combine(_dir, "twice.csv");
        File.WriteAllLines(data, ["a,b,a", "1,2,x", "3,4,y", "5,6,x"]);
        DbpResult result = Dbp("train", "--data", data, "--label", "a", "--epochs", "1");
        Assert.Equal(2, result.ExitCode);
        Assert.Contains("twice.csv:1: the label column 'a' appears twice in the header (columns 1 and 3)", result.Stderr);
        // By index it is unambiguous.
        Assert.Equal(0, Dbp("train", "--data", data, "--label", "2", "--epochs", "1", "--progress", "none").ExitCode);
    }

    [Fact]
    public void CorruptModel_IsAClearError()
    {
        string model = Write("model.safetensors", "garbage that is not a model");
        DbpResult result = Dbp("evaluate", "--model", model, "--data", BlobsCsv());
        Assert.Equal(2, result.ExitCode);
        Assert.Contains("model.safetensors: not a safetensors file", result.Stderr);
    }

    [Fact]
    public void EvaluateWithUnknownClass_NamesTheRow()
    {
        string data = BlobsCsv();
        string model = Path.Combine(_dir, "m.safetensors");
        Assert.Equal(0, Dbp("train", "--data", data, "--layers", "none", "--epochs", "1", "--out", model).ExitCode);
        string other = Write("other.csv", "x1,x2,kind\n1,2,red\n3,4,purple\n");
        DbpResult result = Dbp("evaluate", "--model", model, "--data", other);
        Assert.Equal(2, result.ExitCode);
        Assert.Contains("other.csv:3:3: label 'purple' is not in the class list", result.Stderr);
    }

    [Fact]
    public void SameSeed_SameModelBytes_WhateverTheThreadsOrWorkers()
    {
        string data = BlobsCsv();
        string a = Path.Combine(_dir, "a.safetensors"), b = Path.Combine(_dir, "b.safetensors"), c = Path.Combine(_dir, "c.safetensors");
        string[] common = ["train", "--data", data, "--layers", "6,5", "--epochs", "3", "--optimizer", "adam", "--lr", "0.01"];
        string d = Path.Combine(_dir, "d.safetensors"), e = Path.Combine(_dir, "e.safetensors");
        foreach (string[] args in new string[][]
        {
            [.. common, "--seed", "9", "--out", a, "--workers", "0"],
            [.. common, "--seed", "9", "--out", b, "--workers", "0", "--threads", "3"],
            [.. common, "--seed", "10", "--out", c],
            [.. common, "--seed", "9", "--out", d, "--workers", "1"],
            [.. common, "--seed", "9", "--out", e, "--workers", "3"],
        })
        {
            DbpResult run = Dbp(args);
            Assert.True(run.ExitCode == 0, run.Stderr);
        }
        Assert.Equal(File.ReadAllBytes(a), File.ReadAllBytes(b));
        Assert.Equal(File.ReadAllBytes(a), File.ReadAllBytes(d));
        Assert.Equal(File.ReadAllBytes(a), File.ReadAllBytes(e));
        Assert.NotEqual(File.ReadAllBytes(a), File.ReadAllBytes(c));
    }

    [Fact]
    public void Bench_Json_ReportsThroughputAndGemm()
    {
        DbpResult result = Dbp("bench", "--inputs", "32", "--layers", "16", "--outputs", "4", "--batch-size", "32", "--seconds", "0.2", "--windows", "2", "--warmup", "0.2", "--json");
        Assert.True(result.ExitCode == 0, result.Stderr);
        using var json = JsonDocument.Parse(result.Stdout);
        Assert.True(json.RootElement.GetProperty("samples_per_second").GetDouble() > 0);
        Assert.Equal(32, json.RootElement.GetProperty("config").GetProperty("batch_size").GetInt32());
        // Layer 0: forward and weight gradient; layer 1 also the input gradient.
        Assert.Equal(5, json.RootElement.GetProperty("gemm").GetArrayLength());
    }

    [Fact]
    public void TrainWithWorkers_WritesActorMetrics()
    {
        string metrics = Path.Combine(_dir, "m.jsonl");
        DbpResult result = Dbp("train", "--data", BlobsCsv(), "--layers", "8", "--epochs", "2", "--workers", "2", "--metrics", metrics);
        Assert.True(result.ExitCode == 0, result.Stderr);
        Assert.Contains("2 worker actor(s), local mode", result.Stdout);
        using var json = JsonDocument.Parse(File.ReadAllLines(metrics)[^1]);
        Assert.Equal(2, json.RootElement.GetProperty("workers").GetInt32());
        Assert.True(json.RootElement.TryGetProperty("wait_for_slowest_seconds", out _));
        // Auto's layout tuner starts with the copies of θ: the first epoch's first steps keep them.
        using (var first = JsonDocument.Parse(File.ReadAllLines(metrics)[0]))
        {
            Assert.InRange(first.RootElement.GetProperty("steps_with_theta_copies").GetInt64(), 1, first.RootElement.GetProperty("step").GetInt64());
        }
        Assert.Equal(2, json.RootElement.GetProperty("worker_steps_per_second").EnumerateObject().Count());
        foreach (string quantile in new[] { "worker_step_seconds_median", "worker_step_seconds_p90" })
        {
            var perWorker = json.RootElement.GetProperty(quantile).EnumerateObject().ToList();
            Assert.Equal(2, perWorker.Count);
            Assert.All(perWorker, w => Assert.True(w.Value.GetDouble() > 0, $"{quantile}.{w.Name}"));
        }
    }

    /// <summary>
    /// DBP_STEP_TIMELINE: a real run with 2 worker actors writes, for every step, the server's `dealt`, each worker's
    /// `received`, `started` and `computed`, the server's `arrived` per worker and `applied`, in causal order on the
    /// one clock (bench/step-timeline.py reads these lines). The shards' events are not covered here.
    /// </summary>
    [Fact]
    public void StepTimeline_RecordsEveryStepsEvents_InCausalOrder()
    {
        string timeline = Path.Combine(_dir, "timeline");
        DbpResult result = DbpProcess.Run(_dir, new Dictionary<string, string> { ["DBP_STEP_TIMELINE"] = timeline },
            "train", "--data", BlobsCsv(), "--layers", "8", "--epochs", "2", "--batch-size", "32", "--workers", "2", "--progress", "none");
        Assert.True(result.ExitCode == 0, result.Stderr);
        string[] files = Directory.GetFiles(timeline, "*.tsv");
        Assert.Single(files);
        string[] lines = File.ReadAllLines(files[0]);
        Assert.StartsWith("# ticks per second ", lines[0]);
        var events = lines.Skip(1).Select(line => line.Split('\t')).Select(f => (Ticks: long.Parse(f[0]), What: f[1], Step: long.Parse(f[2]), Who: f[3])).ToList();
        // 120 rows, a fifth held out for the test (--test-fraction 0.2): 96 in batches of 32, 3 steps an epoch, 2 epochs.
        var steps = events.GroupBy(e => e.Step).ToDictionary(g => g.Key, g => g.ToList());
        Assert.Equal(6, steps.Count);
        foreach (var (step, marks) in steps)
        {
            // The first of each: a step that waits past its deadline is dealt again (a second `dealt`, and an answer
            // that may arrive after the update), and a worker's run may be several nodes (a `computed` and an
            // `arrived` each).
            long First(string what, string who) => marks.Where(m => m.What == what && m.Who == who).Select(m => m.Ticks).DefaultIfEmpty(long.MaxValue).Min();
            long applied = Assert.Single(marks, m => m.What == "applied").Ticks;
            string[] dealtTo = marks.Where(m => m.What == "dealt").Select(m => m.Who).Distinct().ToArray();
            Assert.InRange(dealtTo.Length, 1, 2);
            // Dealt again: the laggard's answer may come after the update (and be dropped as stale).
            bool dealtOnce = marks.Count(m => m.What == "dealt") == dealtTo.Length;
            foreach (string worker in dealtTo)
            {
                long dealt = First("dealt", worker), received = First("received", worker), started = First("started", worker);
                long computed = First("computed", worker), arrived = First("arrived", worker);
                Assert.True(dealt <= received && received <= started && started <= computed && computed <= arrived && (arrived <= applied || !dealtOnce),
                    $"step {step}, {worker}: dealt {dealt}, received {received}, started {started}, computed {computed}, arrived {arrived}, applied {applied} (long.MaxValue: missing)");
            }
            Assert.True(dealtTo.Min(worker => First("arrived", worker)) <= applied, $"step {step}: applied before any gradient arrived");
        }
    }

    [Fact]
    public void BenchWithWorkers_MeasuresTheActorPath()
    {
        DbpResult result = Dbp("bench", "--inputs", "32", "--layers", "16", "--outputs", "4", "--batch-size", "64", "--workers", "2", "--seconds", "0.3", "--windows", "2", "--warmup", "0.3", "--no-gemm", "--json");
        Assert.True(result.ExitCode == 0, result.Stderr);
        using var json = JsonDocument.Parse(result.Stdout);
        Assert.True(json.RootElement.GetProperty("samples_per_second").GetDouble() > 0);
        Assert.Equal(2, json.RootElement.GetProperty("config").GetProperty("workers").GetInt32());
        Assert.True(json.RootElement.TryGetProperty("server_time_fraction", out _));
    }

    [Fact]
    public void Help_IsAvailableOnEveryCommand()
    {
        foreach (string command in new[] { "train", "evaluate", "predict", "gradients", "bench" })
        {
            DbpResult result = Dbp(command, "--help");
            Assert.Equal(0, result.ExitCode);
            Assert.Contains("Usage:", result.Stdout);
        }
    }

    [GeneratedRegex(@"test accuracy: ([0-9.]+) %")]
    private static partial Regex AccuracyLine();
}
