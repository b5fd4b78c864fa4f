using System.Globalization;
using DistributedBackprop.Data;
using DistributedBackprop.Models;
using DistributedBackprop.Network;
using DistributedBackprop.Optimizers;

namespace DistributedBackprop.Cli.Tests;

/// <summary>
/// docs/retropropagacion.md's worked 2-2-1 example: every number of its `valores` block (z, a, J, δ, ∂J/∂W,
/// ∂J/∂b, the updated W and b) recomputed — the forward quantities by the engine's forward pass
/// (Network&lt;double&gt;), the gradients and δ (= ∂J/∂b for one example) by `dbp gradients` on the model and
/// the example written as files, the update by an SGD step of <see cref="Optimizer"/>.
/// </summary>
public sealed class RetropropagacionTests : IDisposable
{
    private const double Tolerance = 1e-7;
    private readonly string _dir = Directory.CreateTempSubdirectory("dbp-lecture-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    /// <summary>The document's `valores` block: name → values (matrices by rows, in the lecture's orientation).</summary>
    private static Dictionary<string, double[]> DocumentValues()
    {
        string? path = null;
        for (string? dir = AppContext.BaseDirectory; dir is not null && path is null; dir = Path.GetDirectoryName(dir))
        {
            string candidate = Path.Combine(dir, "docs", "retropropagacion.md");
            path = File.Exists(candidate) ? candidate : null;
        }
        Assert.NotNull(path);
        string[] lines = File.ReadAllLines(path);
        int start = Array.IndexOf(lines, "```valores");
        Assert.True(start >= 0, "docs/retropropagacion.md has no ```valores block");
        var values = new Dictionary<string, double[]>();
        for (int i = start + 1; lines[i] != "```"; i++)
        {
            string[] parts = lines[i].Split('=', 2, StringSplitOptions.TrimEntries);
            values.Add(parts[0], parts[1].Split(',').Select(v => double.Parse(v, CultureInfo.InvariantCulture)).ToArray());
        }
        return values;
    }

    private static void Near(double[] expected, IEnumerable<double> actual, string name)
    {
        double[] got = actual.ToArray();
        Assert.True(expected.Length == got.Length, $"{name}: {expected.Length} values in the document, {got.Length} computed");
        for (int i = 0; i < got.Length; i++)
        {
            Assert.True(Math.Abs(expected[i] - got[i]) <= Tolerance, $"{name}[{i}]: the document says {expected[i]}, computed {got[i]:R}");
        }
    }

    /// <summary>A lecture-orientation matrix W[in][out] (by rows) as the model's [out, in] layout.</summary>
    private static float[] Transposed(double[] rowsInByOut, int inputs, int outputs)
    {
        var t = new float[inputs * outputs];
        for (int i = 0; i < inputs; i++) for (int j = 0; j < outputs; j++) t[j * inputs + i] = (float)rowsInByOut[i * outputs + j];
        return t;
    }

    private static double[] LectureOrder(float[] outByIn, int inputs, int outputs)
    {
        var w = new double[inputs * outputs];
        for (int i = 0; i < inputs; i++) for (int j = 0; j < outputs; j++) w[i * outputs + j] = outByIn[j * inputs + i];
        return w;
    }

    [Fact]
    public void Every_number_of_the_worked_example_is_what_the_engine_and_dbp_gradients_compute()
    {
        Dictionary<string, double[]> doc = DocumentValues();
        var arch = Architecture.Create(2, [2], 1, Activation.Sigmoid, Activation.Sigmoid, Loss.MeanSquaredError);
        var parameters = new float[arch.ParameterCount];
        Transposed(doc["W1"], 2, 2).CopyTo(arch.Weight(parameters.AsSpan(), 0));
        doc["b1"].Select(v => (float)v).ToArray().CopyTo(arch.Bias(parameters.AsSpan(), 0));
        Transposed(doc["W2"], 2, 1).CopyTo(arch.Weight(parameters.AsSpan(), 1));
        doc["b2"].Select(v => (float)v).ToArray().CopyTo(arch.Bias(parameters.AsSpan(), 1));
        var model = new ModelFile(arch, parameters, new Preprocessing([0f, 0f], [1f, 1f]), ["uno"]);
        string modelPath = Path.Combine(_dir, "ejemplo.safetensors"), data = Path.Combine(_dir, "ejemplo.csv"), output = Path.Combine(_dir, "gradientes.safetensors");
        model.Save(modelPath);
        Assert.Equal([1.0], doc["y"]);
        File.WriteAllText(data, FormattableString.Invariant($"x1,x2,clase\n{doc["x"][0]},{doc["x"][1]},uno\n"));

        // Forward: the engine's z and a.
        var network = new Network<double>(arch);
        doc["x"].CopyTo(network.Input(1));
        double[] theta = parameters.Select(p => (double)p).ToArray();
        network.Forward(theta, 1);
        double[] z1 = network.PreActivations(0, 1).ToArray(), a1 = new double[2];
        Activations.ForwardRow<double>(Activation.Sigmoid, z1, a1);
        Near(doc["z1"], z1, "z1");
        Near(doc["a1"], a1, "a1");
        Near(doc["z2"], network.PreActivations(1, 1).ToArray(), "z2");
        Near(doc["a2"], network.Output(1).ToArray(), "a2");

        // Backward: dbp gradients.
        DbpResult run = DbpProcess.Run(_dir, "gradients", "--model", modelPath, "--data", data, "--out", output);
        Assert.True(run.ExitCode == 0, run.Stderr);
        var (tensors, metadata) = SafeTensors.Read(output);
        Near(doc["J"], [double.Parse(metadata["loss_value"], CultureInfo.InvariantCulture)], "J");
        double[] dW1 = LectureOrder(tensors["layers.0.weight"].Data, 2, 2), dW2 = LectureOrder(tensors["layers.1.weight"].Data, 2, 1);
        double[] db1 = tensors["layers.0.bias"].Data.Select(v => (double)v).ToArray(), db2 = tensors["layers.1.bias"].Data.Select(v => (double)v).ToArray();
        Near(doc["dJ/dW1"], dW1, "dJ/dW1");
        Near(doc["dJ/db1"], db1, "dJ/db1");
        Near(doc["dJ/dW2"], dW2, "dJ/dW2");
        Near(doc["dJ/db2"], db2, "dJ/db2");
        // δ_l = ∂J/∂z_l is ∂J/∂b_l for one example; ∂J/∂a_1 = δ_1 / σ'(z_1) = δ_1 / (a_1 (1 − a_1)).
        Near(doc["delta2"], db2, "delta2");
        Near(doc["delta1"], db1, "delta1");
        Near(doc["dJ/da1"], db1.Select((d, j) => d / (a1[j] * (1 - a1[j]))), "dJ/da1");

        // Update: one SGD step with γ.
        float gamma = (float)doc["gamma"][0];
        var gradient = new float[arch.ParameterCount];
        Transposed(dW1, 2, 2).CopyTo(arch.Weight(gradient.AsSpan(), 0));
        db1.Select(v => (float)v).ToArray().CopyTo(arch.Bias(gradient.AsSpan(), 0));
        Transposed(dW2, 2, 1).CopyTo(arch.Weight(gradient.AsSpan(), 1));
        db2.Select(v => (float)v).ToArray().CopyTo(arch.Bias(gradient.AsSpan(), 1));
        float[] updated = (float[])parameters.Clone();
        new Optimizer(arch, new OptimizerSettings { Kind = OptimizerKind.Sgd, LearningRate = gamma }).Apply(updated, gradient, gamma);
        Near(doc["W1'"], LectureOrder(arch.Weight<float>(updated, 0).ToArray(), 2, 2), "W1'");
        Near(doc["b1'"], arch.Bias<float>(updated, 0).ToArray().Select(v => (double)v), "b1'");
        Near(doc["W2'"], LectureOrder(arch.Weight<float>(updated, 1).ToArray(), 2, 1), "W2'");
        Near(doc["b2'"], arch.Bias<float>(updated, 1).ToArray().Select(v => (double)v), "b2'");
    }
}
