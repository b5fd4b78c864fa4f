using System.Globalization;
using System.Text.Json;
using DistributedBackprop.Data;
using DistributedBackprop.Kernels;
using DistributedBackprop.Network;

namespace DistributedBackprop.Models;

/// <summary>
/// A trained model as a safetensors file a PyTorch user can read: tensors layers.{i}.weight [out, in]
/// (nn.Linear layout, z = x·Wᵀ + b), layers.{i}.bias [out], input.shift and input.scale [in]
/// (x' = (x − shift)·scale), and metadata activations / loss / classes / format_version.
/// </summary>
public sealed class ModelFile
{
    public const string FormatVersion = "1";

    public ModelFile(Architecture architecture, float[] parameters, Preprocessing preprocessing, IReadOnlyList<string> classes, IReadOnlyDictionary<string, string>? extraMetadata = null)
    {
        if (parameters.Length != architecture.ParameterCount)
        {
            throw new ArgumentException($"{parameters.Length} parameters for a network of {architecture.ParameterCount}");
        }
        if (preprocessing.Features != architecture.Inputs)
        {
            throw new ArgumentException($"preprocessing has {preprocessing.Features} features, the network {architecture.Inputs} inputs");
        }
        if (classes.Count != architecture.Outputs)
        {
            throw new ArgumentException($"{classes.Count} classes for {architecture.Outputs} outputs");
        }
        Architecture = architecture;
        Parameters = parameters;
        Preprocessing = preprocessing;
        Classes = classes;
        ExtraMetadata = extraMetadata ?? new Dictionary<string, string>();
    }

    public Architecture Architecture { get; }
    public float[] Parameters { get; }
    public Preprocessing Preprocessing { get; }
    public IReadOnlyList<string> Classes { get; }
    public IReadOnlyDictionary<string, string> ExtraMetadata { get; }

    /// <summary>The tensors in file order, parameters copied into per-layer arrays.</summary>
    public List<Tensor> ToTensors()
    {
        var tensors = new List<Tensor>();
        for (int l = 0; l < Architecture.Layers.Count; l++)
        {
            LayerSpec layer = Architecture.Layers[l];
            tensors.Add(new Tensor($"layers.{l}.weight", [layer.Outputs, layer.Inputs], Architecture.Weight<float>(Parameters, l).ToArray()));
            tensors.Add(new Tensor($"layers.{l}.bias", [layer.Outputs], Architecture.Bias<float>(Parameters, l).ToArray()));
        }
        tensors.Add(new Tensor("input.shift", [Architecture.Inputs], Preprocessing.Shift));
        tensors.Add(new Tensor("input.scale", [Architecture.Inputs], Preprocessing.Scale));
        return tensors;
    }

    public Dictionary<string, string> Metadata()
    {
        var metadata = new Dictionary<string, string>(ExtraMetadata)
        {
            ["format_version"] = FormatVersion,
            ["producer"] = "DistributedBackprop",
            ["activations"] = string.Join(',', Architecture.Layers.Select(l => l.Activation.Name())),
            ["loss"] = Architecture.Loss.Name(),
            ["classes"] = string.Join(',', Classes),
            ["classes_json"] = JsonSerializer.Serialize(Classes.ToArray(), ModelJson.Default.StringArray),
        };
        return metadata;
    }

    /// <summary>Writes the model atomically (temporary file, then rename).</summary>
    public void Save(string path) => Save(path, []);

    /// <summary>Writes the model plus extra tensors (a checkpoint's optimizer state) atomically.</summary>
    public void Save(string path, IEnumerable<Tensor> extraTensors)
    {
        var tensors = ToTensors();
        tensors.AddRange(extraTensors);
        var metadata = Metadata();
        DataFiles.WriteAtomically(path, stream => SafeTensors.Write(stream, tensors, metadata));
    }

    public static ModelFile Load(string path) => FromTensors(SafeTensors.Read(path), path);

    public static ModelFile FromTensors((Dictionary<string, Tensor> Tensors, Dictionary<string, string> Metadata) file, string path)
    {
        var (tensors, metadata) = file;
        string Require(string key) => metadata.TryGetValue(key, out string? value)
            ? value
            : throw new ModelFileException($"{path}: not a DistributedBackprop model (metadata has no '{key}')");

        string version = Require("format_version");
        if (version != FormatVersion)
        {
            throw new ModelFileException($"{path}: model format_version {version} is not supported (this build reads {FormatVersion})");
        }
        Activation[] activations;
        Loss loss;
        try
        {
            activations = Require("activations").Split(',').Select(Activations.Parse).ToArray();
            loss = Losses.Parse(Require("loss"));
        }
        catch (FormatException e)
        {
            throw new ModelFileException($"{path}: {e.Message}", e);
        }
        string[] classes = metadata.TryGetValue("classes_json", out string? classesJson)
            ? ParseClassesJson(classesJson, path)
            : Require("classes").Split(',');

        Tensor Get(string name) => tensors.TryGetValue(name, out Tensor? t)
            ? t
            : throw new ModelFileException($"{path}: tensor {name} is missing");

        var layers = new List<LayerSpec>();
        for (int l = 0; l < activations.Length; l++)
        {
            Tensor weight = Get($"layers.{l}.weight");
            Tensor bias = Get($"layers.{l}.bias");
            if (weight.Shape.Length != 2 || bias.Shape.Length != 1 || bias.Shape[0] != weight.Shape[0])
            {
                throw new ModelFileException($"{path}: layers.{l} has weight [{string.Join(',', weight.Shape)}] and bias [{string.Join(',', bias.Shape)}]; expected [out, in] and [out]");
            }
            RequireFinite(weight, path);
            RequireFinite(bias, path);
            layers.Add(new LayerSpec(weight.Shape[1], weight.Shape[0], activations[l]));
        }
        if (tensors.ContainsKey($"layers.{activations.Length}.weight"))
        {
            throw new ModelFileException($"{path}: more layers than the {activations.Length} activations in the metadata");
        }
        Architecture architecture;
        try
        {
            architecture = new Architecture(layers[0].Inputs, layers, loss);
        }
        catch (ArgumentException e)
        {
            throw new ModelFileException($"{path}: inconsistent layers: {e.Message}", e);
        }
        if (classes.Length != architecture.Outputs)
        {
            throw new ModelFileException($"{path}: {classes.Length} classes in the metadata for {architecture.Outputs} outputs");
        }
        var parameters = new float[architecture.ParameterCount];
        for (int l = 0; l < layers.Count; l++)
        {
            Get($"layers.{l}.weight").Data.AsSpan().CopyTo(architecture.Weight(parameters.AsSpan(), l));
            Get($"layers.{l}.bias").Data.AsSpan().CopyTo(architecture.Bias(parameters.AsSpan(), l));
        }
        Tensor shift = Get("input.shift"), scale = Get("input.scale");
        if (shift.Data.Length != architecture.Inputs || scale.Data.Length != architecture.Inputs)
        {
            throw new ModelFileException($"{path}: input.shift/input.scale must have {architecture.Inputs} values");
        }
        RequireFinite(shift, path);
        RequireFinite(scale, path);
        var extra = metadata.Where(kv => kv.Key is not ("format_version" or "activations" or "loss" or "classes" or "classes_json" or "producer"))
            .ToDictionary(kv => kv.Key, kv => kv.Value);
        return new ModelFile(architecture, parameters, new Preprocessing(shift.Data, scale.Data), classes, extra);
    }

    /// <summary>
    /// NaN or infinity read from a file would flow through every layer unnoticed (evaluate printed loss NaN
    /// and exited 0; a resumed run "diverged" at its first step): the file is refused at the first bad value.
    /// </summary>
    public static void RequireFinite(Tensor tensor, string path)
    {
        if (FiniteValues.All(tensor.Data))
        {
            return;
        }
        int at = Array.FindIndex(tensor.Data, v => !float.IsFinite(v));
        throw new ModelFileException($"{path}: tensor {tensor.Name} holds {tensor.Data[at].ToString(CultureInfo.InvariantCulture)} at index {at}; its values must be finite");
    }

    /// <summary>classes_json must be a JSON array of strings: a null name would break every class lookup later.</summary>
    private static string[] ParseClassesJson(string json, string path)
    {
        string[]? classes;
        try
        {
            classes = JsonSerializer.Deserialize(json, ModelJson.Default.StringArray);
        }
        catch (JsonException e)
        {
            throw new ModelFileException($"{path}: __metadata__.classes_json is not a JSON array of strings ({e.Message})", e);
        }
        if (classes is null || classes.Any(c => c is null))
        {
            throw new ModelFileException($"{path}: __metadata__.classes_json is not a JSON array of strings (it holds null)");
        }
        return classes;
    }
}

[System.Text.Json.Serialization.JsonSerializable(typeof(string[]))]
internal sealed partial class ModelJson : System.Text.Json.Serialization.JsonSerializerContext;
