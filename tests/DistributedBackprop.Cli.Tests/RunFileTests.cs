using System.Text.Json;

namespace DistributedBackprop.Cli.Tests;

/// <summary>Run files: options from JSON (command line wins), a model's recipe, --print-run round trips, bad files in one line.</summary>
public sealed class RunFileTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("dbp-run-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private string File_(string name, string content)
    {
        string path = Path.Combine(_dir, name);
        File.WriteAllText(path, content);
        return path;
    }

    private byte[] Train(params string[] args)
    {
        string model = Path.Combine(_dir, $"model-{Guid.NewGuid():N}.safetensors");
        DbpResult run = DbpProcess.Run(_dir, ["train", .. args, "--out", model, "--progress", "none"]);
        Assert.True(run.ExitCode == 0, run.Stderr);
        return File.ReadAllBytes(model);
    }

    [Fact]
    public void A_run_file_its_printed_form_and_a_models_recipe_all_train_the_same_model()
    {
        string run = File_("run.json", """
            // comments and trailing commas are fine
            { "layers": [24, 12], "epochs": 3, "optimizer": "adam", "lr": 0.01, "nesterov": false, "workers": 0, "seed": 7, }
            """);
        byte[] explicitOptions = Train("--layers", "24,12", "--epochs", "3", "--optimizer", "adam", "--lr", "0.01", "--workers", "0", "--seed", "7");
        Assert.Equal(explicitOptions, Train("--run", run));

        DbpResult printed = DbpProcess.Run(_dir, "train", "--run", run, "--print-run");
        Assert.True(printed.ExitCode == 0, printed.Stderr);
        using (JsonDocument json = JsonDocument.Parse(printed.Stdout))
        {
            Assert.Equal("24,12", json.RootElement.GetProperty("layers").GetString());
            Assert.Equal("adam", json.RootElement.GetProperty("optimizer").GetString());
            Assert.Equal(32, json.RootElement.GetProperty("batch-size").GetInt32()); // defaults are printed too
            Assert.False(json.RootElement.TryGetProperty("nesterov", out _));
        }
        Assert.Equal(explicitOptions, Train("--run", File_("printed.json", printed.Stdout)));

        // A model file's recipe: its training configuration, the data given as usual.
        string model = Path.Combine(_dir, "recipe.safetensors");
        File.WriteAllBytes(model, explicitOptions);
        Assert.Equal(explicitOptions, Train("--run", model, "--workers", "0"));
    }

    [Fact]
    public void The_command_line_wins_over_the_run_file()
    {
        string run = File_("run.json", """{ "epochs": 9, "optimizer": "sgd" }""");
        DbpResult printed = DbpProcess.Run(_dir, "train", "--run", run, "--epochs", "2", "--print-run");
        Assert.True(printed.ExitCode == 0, printed.Stderr);
        using JsonDocument json = JsonDocument.Parse(printed.Stdout);
        Assert.Equal(2, json.RootElement.GetProperty("epochs").GetInt32());
        Assert.Equal("sgd", json.RootElement.GetProperty("optimizer").GetString());
    }

    [Fact]
    [System.Runtime.Versioning.UnsupportedOSPlatform("windows")]
    public void An_unreadable_run_file_is_one_line_naming_it_and_exit_code_2()
    {
        string run = File_("secret.json", """{ "epochs": 1 }""");
        File.SetUnixFileMode(run, UnixFileMode.None);
        File.SetUnixFileMode(_dir, (UnixFileMode)0b111_101_101); // nobody reaches the file, cannot read it
        DbpProcess.AssertUsageError(DbpProcess.RunUnprivileged(_dir, "train", "--run", run), $"--run: {run} cannot be read (permission denied)");
        DbpProcess.AssertUsageError(DbpProcess.Run(_dir, "train", "--run", _dir), $"--run: {_dir} is a directory");
    }

    [Fact]
    public void A_model_whose_stored_configuration_is_broken_is_one_line_naming_the_file()
    {
        // A safetensors file of metadata only: its recipe is not JSON.
        byte[] header = System.Text.Encoding.UTF8.GetBytes("""{"__metadata__": {"config": "{broken"}}""");
        string model = Path.Combine(_dir, "broken.safetensors");
        File.WriteAllBytes(model, [.. BitConverter.GetBytes((ulong)header.Length), .. header]);
        DbpProcess.AssertUsageError(DbpProcess.Run(_dir, "train", "--run", model), $"{model}: the training configuration in its metadata is not valid");
    }

    [Theory]
    [InlineData("""{ "epocs": 3 }""", "'epocs' is not an option of dbp train (did you mean 'epochs'?)")]
    [InlineData("""{ "epochs": 0 }""", "--epochs: must be at least 1, got 0 (from --run bad.json)")]
    [InlineData("""{ "epochs": "x" }""", "--epochs: 'x' is not an integer (from --run bad.json)")]
    [InlineData("""{ "layers": "0" }""", "(from --run bad.json)")]
    [InlineData("""{ "nesterov": "yes" }""", "'nesterov' is a switch: true or false, got \"yes\"")]
    [InlineData("""[ "epochs" ]""", "a run file is a JSON object of options")]
    [InlineData("""{ "epochs": {"a": 1} }""", "'epochs' must be a string, a number, true/false or a list of them")]
    [InlineData("""{ "epochs": 3 """, "not a JSON run file")]
    public void A_bad_run_file_is_one_line_and_exit_code_2(string content, string expected)
    {
        File_("bad.json", content);
        DbpResult result = DbpProcess.Run(_dir, "train", "--run", "bad.json");
        Assert.Equal(2, result.ExitCode);
        Assert.Contains(expected, result.Stderr);
        Assert.StartsWith("dbp train: ", result.Stderr);
    }
}
