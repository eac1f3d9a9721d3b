# vmfleet example: a Windows machine image. vmfleet's user data enables OpenSSH Server with each
# VM's key at boot; this image adds what jobs need and prepares the circleci user.
# Build:    packer init windows.pkr.hcl && packer build -var region=us-east-1 windows.pkr.hcl
# Register: vmfleet images register --packer-manifest packer-manifest.json --name windows-2022 --version 2022-01 --kind windows
#           vmfleet images promote windows-2022 2022-01 --alias windows-default

packer {
  required_plugins {
    amazon = {
      source  = "github.com/hashicorp/amazon"
      version = ">= 1.2.0"
    }
  }
}

variable "region" {
  type    = string
  default = "us-east-1"
}

source "amazon-ebs" "windows" {
  region         = var.region
  instance_type  = "m5.xlarge"
  ami_name       = "vmfleet-windows-{{timestamp}}"
  communicator   = "winrm"
  winrm_username = "Administrator"
  winrm_use_ssl  = true
  winrm_insecure = true
  user_data      = "<powershell>winrm quickconfig -q; winrm set winrm/config/service/auth '@{Basic=\"true\"}'</powershell>"
  source_ami_filter {
    filters = {
      name = "Windows_Server-2022-English-Full-Base-*"
    }
    owners      = ["801119661308"]
    most_recent = true
  }
}

build {
  name    = "windows"
  sources = ["source.amazon-ebs.windows"]

  provisioner "powershell" {
    inline = [
      "Add-WindowsCapability -Online -Name OpenSSH.Server~~~~0.0.1.0",
      "Set-Service -Name sshd -StartupType Automatic",
      "New-ItemProperty -Path 'HKLM:\\SOFTWARE\\OpenSSH' -Name DefaultShell -Value 'C:\\Windows\\System32\\WindowsPowerShell\\v1.0\\powershell.exe' -PropertyType String -Force",
      "Set-ExecutionPolicy Bypass -Scope Process -Force; iex ((New-Object System.Net.WebClient).DownloadString('https://community.chocolatey.org/install.ps1'))",
      "choco install -y git",
    ]
  }

  # Leave the image ready for first boot, so vmfleet's user data runs on every VM.
  provisioner "powershell" {
    inline = ["& 'C:\\ProgramData\\Amazon\\EC2Launch\\ec2launch.exe' sysprep --shutdown=false"]
  }

  post-processor "manifest" {
    output     = "packer-manifest.json"
    strip_path = true
    custom_data = {
      arch = "x86_64"
      kind = "windows"
    }
  }
}
